"""Callbacks: when a task ends, POST it to the callback URL its submitter gave.

The transaction that ends a task also writes a ``callbacks`` row (``row``), so a callback is never lost nor sent
for an end that did not happen. Workers' maintenance sends the due rows (``CallbackSender.send_due``): at least
once, with the row id as ``Idempotency-Key`` so receivers can drop repeats, a W3C ``traceparent`` continuing the
task's trace, exponential backoff between attempts, and a final ``failed`` state after ``max_attempts`` or at
once when the receiver refuses (a 4xx other than 408/429) or the URL points at a private address without
``allow_private_networks`` (SSRF, as for HTTP connectors).

The body, as webhooks conventionally are (CloudEvents-like, camelCase)::

    {"id": "<callback id>", "type": "task.completed", "time": "...",
     "task": {"id", "workflow", "workflowVersion", "state", "result", "error", "finishedAt", "idempotencyKey"}}

A result stored by reference (larger than the inline limit) is left out (``resultOmitted: true``): fetch the task.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa

from crds.workflow import Backoff
from engine import metrics
from engine.clock import Clock, new_id
from engine.errors import StepError
from engine.executors.destinations import check_destination
from engine.executors.http import USER_AGENT, classify_status
from engine.payloads import Encoded
from engine.retry import backoff_delay
from engine.store.database import Database
from engine.store.schema import callbacks
from engine.tracing import context_from_traceparent, inject_headers, tracer

log = logging.getLogger(__name__)

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
SPAN_CALLBACK = "aiplane.engine.callback"
DEFAULT_BACKOFF = Backoff(initial="1s", max="5m", multiplier=3.0, jitter=0.2)

_INSERT = sa.insert(callbacks)


def row(
    task: Any, event: str, state: str, *, result: Encoded | None, error: Mapping[str, Any] | None, now: datetime
) -> dict[str, Any]:
    """The callbacks row for ``task`` (a tasks row) ending in ``state``, announced as ``event`` (task.completed,
    task.failed, ...: the outbox event of the same end)."""
    body: dict[str, Any] = {
        "id": task.id,
        "workflow": task.workflow,
        "workflowVersion": task.workflow_version,
        "state": state,
        "error": dict(error) if error is not None else None,
        "finishedAt": now.isoformat().replace("+00:00", "Z"),
        "idempotencyKey": task.request_key or task.idempotency_key,
    }
    if result is not None and result.ref is not None:
        body["resultOmitted"] = True
    else:
        body["result"] = json.loads(result.inline) if result is not None and result.inline is not None else None
    callback_id = new_id()
    return {
        "id": callback_id,
        "task_id": task.id,
        "tenant": task.tenant,
        "url": task.callback_url,
        "payload": {
            "id": callback_id,
            "type": event,
            "time": body["finishedAt"],
            "traceparent": task.trace_context,
            "task": body,
        },
        "state": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "last_error": None,
        "created_at": now,
        "finished_at": None,
    }


def record(conn: sa.Connection, values: dict[str, Any]) -> None:
    conn.execute(_INSERT, values)


class CallbackSender:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        client: httpx.Client | None = None,
        timeout: float = 10.0,
        max_attempts: int = 8,
        backoff: Backoff = DEFAULT_BACKOFF,
        allow_private_networks: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.client = client or httpx.Client(timeout=timeout, headers={"User-Agent": USER_AGENT})
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.allow_private_networks = allow_private_networks
        self.rng = rng or random.Random()

    def close(self) -> None:
        self.client.close()

    def send_due(self, limit: int = 20) -> int:
        """Send the callbacks that are due; returns how many were tried."""
        now = self.clock()
        with self.db.write() as conn:
            due = conn.execute(
                sa.select(callbacks)
                .where(callbacks.c.state == PENDING, callbacks.c.next_attempt_at <= now)
                .order_by(callbacks.c.next_attempt_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if due:
                # Taken for as long as an attempt may last: no other worker sends these meanwhile.
                conn.execute(
                    sa.update(callbacks)
                    .where(callbacks.c.id.in_([r.id for r in due]))
                    .values(next_attempt_at=now + timedelta(seconds=self.timeout * 2))
                )
        for callback in due:
            self._send(callback)
        return len(due)

    def _send(self, callback: sa.Row[Any]) -> None:
        payload: dict[str, Any] = callback.payload
        error: dict[str, Any] | None = None
        retryable = True
        parent = context_from_traceparent(payload.get("traceparent"))
        attributes = {"aiplane.task.id": callback.task_id, "url.full": callback.url}
        with tracer().start_as_current_span(SPAN_CALLBACK, context=parent, attributes=attributes):
            headers = {"Idempotency-Key": callback.id, "Content-Type": "application/json"}
            inject_headers(headers)
            body = {k: v for k, v in payload.items() if k != "traceparent"}
            try:
                check_destination(callback.url, self.allow_private_networks)
                response = self.client.post(callback.url, json=body, headers=headers)
                if not 200 <= response.status_code < 300:
                    kind, retryable = classify_status(response.status_code)
                    error = {"kind": kind, "message": f"the callback URL answered HTTP {response.status_code}"}
            except StepError as exc:  # the destination check
                error, retryable = {"kind": exc.kind, "message": exc.message}, exc.retryable
            except httpx.HTTPError as exc:
                error = {"kind": type(exc).__name__, "message": str(exc) or type(exc).__name__}
        self._record(callback, error, retryable)

    def _record(self, callback: sa.Row[Any], error: dict[str, Any] | None, retryable: bool) -> None:
        now = self.clock()
        attempts = callback.attempts + 1
        values: dict[str, Any] = {"attempts": attempts, "last_error": error}
        if error is None:
            values.update(state=DELIVERED, finished_at=now, next_attempt_at=None)
            outcome = "delivered"
        elif not retryable or attempts >= self.max_attempts:
            values.update(state=FAILED, finished_at=now, next_attempt_at=None)
            outcome = "failed"
            log.warning(
                "callback of task %s to %s failed for good after %d attempt(s): %s",
                callback.task_id,
                callback.url,
                attempts,
                error["message"],
                extra={"task_id": callback.task_id, "callback_id": callback.id},
            )
        else:
            values["next_attempt_at"] = now + backoff_delay(self.backoff, attempts, self.rng)
            outcome = "retrying"
        with self.db.write() as conn:
            conn.execute(sa.update(callbacks).where(callbacks.c.id == callback.id).values(values))
        metrics.CALLBACKS.labels(outcome).inc()
