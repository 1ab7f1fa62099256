"""Group commit for task submissions: concurrent requests share one transaction.

Each ``POST /v1/tasks`` hands its submission to ``SubmitBatcher.submit`` and awaits its outcome. While a batch is
being written (on a worker thread, the store being blocking), the submissions that arrive queue up; when it is
done they all go together in the next one. Nothing waits for a batch to fill: a lone request is written at
once, and under load each commit (and its fsync) carries as many requests as arrived during the previous one.
This is the classic group commit of databases and message brokers; it is what lets durable, idempotent
submission keep up with a bare HTTP endpoint (benchmarks/bench_submit).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence

import anyio.to_thread

from engine import Engine, Outcome, Submission

#: Submissions per transaction at most; a bigger backlog goes in several batches, one after another.
MAX_BATCH = 128


class SubmitBatcher:
    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._pending: list[tuple[Submission, asyncio.Future[Outcome]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, submission: Submission) -> Outcome:
        """Queue ``submission`` for the next batch and wait for its outcome (an error is returned, not raised)."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((submission, future))
        if self._writer is None or self._writer.done():
            # A context of its own: the writer serves many requests and must not carry the first one's trace.
            self._writer = asyncio.create_task(self._write_batches(), context=contextvars.Context())
        # Shielded: a client that goes away must not cancel a submission other requests' batch already holds.
        return await asyncio.shield(future)

    async def _write_batches(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            submissions = [submission for submission, _ in batch]
            try:
                outcomes: Sequence[Outcome] = await anyio.to_thread.run_sync(self.engine.submit_many, submissions)
            except Exception as exc:  # the store failed the whole batch: every request in it hears why
                outcomes = [exc] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
