"""Throughput of authenticated, idempotent, traced task submission (POST /v1/tasks?mode=async) vs a bare app.

Subject: the gateway (``api.app.create_app``) under a real uvicorn in its own process, over an ``Engine`` on a
SQLite file. Every request carries an API key (``Authorization: Bearer``), a unique ``Idempotency-Key`` (so every
request claims and completes a key and creates a task) and a W3C ``traceparent`` (the gateway's span continues
it; the engine's submit span follows). No worker runs during the measurement: submission is what is measured,
and a worker in the gateway's process would take its CPU for running the tasks. Measured twice: with the
store's default ``sqlite_synchronous=FULL`` (an fsync per commit) and with ``NORMAL``.

Baseline: a bare FastAPI route under the same uvicorn settings, in its own process, that reads the body and
answers the same JSON document (the gateway's own answer to the warm-up request) with 202 and a Location.

For scale, a third server is measured against the same baseline: the bare route that also appends each request
to SQLite (standard-library sqlite3, group-committed on a thread like the gateway's submissions, the same
``synchronous``): what durability alone costs, before authentication, idempotency, policy, tracing and the
task's own rows.

All are driven by the same load generator (``benchmarks.servers.run_load``: N keep-alive connections on
loopback, a fixed number of requests per round), in interleaved rounds. The ratio is subject over baseline
seconds per request, so the throughput share is its inverse (target: the gateway at 40% or more of the bare
app's requests per second). Each report also gives the CPU time each server process spent per request over its
rounds, which on a shared machine says what a request costs even where a server did not get a whole core.
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api import create_api_key
from benchmarks.harness import Comparison
from benchmarks.servers import ServedProcess, http_request, run_load, scratch_dir, served, smoke
from engine import Engine

WORKFLOW = "bench-submit"
SPEC: dict[str, Any] = {
    "inputSchema": {
        "type": "object",
        "required": ["claimId"],
        "properties": {"claimId": {"type": "string"}, "amount": {"type": "number", "minimum": 0}},
    },
    "steps": [{"name": "decide", "type": "rules", "rules": {"set": {"large": "input.amount > 1000.0"}}}],
}
BODY = json.dumps({"workflow": {"name": WORKFLOW}, "input": {"claimId": "C-1", "amount": 1250.0}}).encode()
PATH = "/v1/tasks?mode=async"


@dataclass(frozen=True)
class Sizes:
    rounds: int = 5
    gateway_requests: int = 120
    append_requests: int = 400
    bare_requests: int = 1000
    warmup: int = 30
    concurrency: int = 16

    @classmethod
    def default(cls) -> Sizes:
        if smoke():
            return cls(rounds=2, gateway_requests=20, append_requests=20, bare_requests=40, warmup=5, concurrency=4)
        return cls()


def requests(url: str, key: str, count: int) -> list[bytes]:
    """``count`` submissions, each with its own Idempotency-Key and trace."""
    return [
        http_request(
            "POST",
            url + PATH,
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "Idempotency-Key": str(uuid.uuid4()),
                "traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01",
            },
            body=BODY,
        )
        for _ in range(count)
    ]


def _prepare(db_url: str) -> str:
    """Migrate the store, register the workflow, make an API key (the gateway process opens the same file)."""
    with Engine(db_url) as engine:
        engine.register_workflow(WORKFLOW, SPEC)
        return create_api_key(engine, "bench", "loadgen", ["submitter"])


def _sample_answer(gateway: ServedProcess, key: str) -> tuple[dict[str, Any], dict[str, str]]:
    response = httpx.post(
        gateway.url + PATH,
        content=BODY,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Idempotency-Key": "warm"},
        timeout=30,
    )
    if response.status_code != 202:
        raise RuntimeError(f"gateway answered {response.status_code}: {response.text}")
    body: dict[str, Any] = response.json()
    return body, {"Location": response.headers["location"]}


@dataclass
class _Side:
    """One server's samples (seconds per request, per round) and the CPU seconds it spent over them."""

    server: ServedProcess
    requests: int
    samples: list[float] = field(default_factory=list)
    cpu_s: float | None = 0.0

    def round(self, key: str, concurrency: int) -> None:
        before = self.server.cpu_seconds()
        result = run_load(
            self.server.url, requests(self.server.url, key, self.requests), concurrency=concurrency, expect=202
        )
        after = self.server.cpu_seconds()
        self.samples.append(result.per_request_s)
        if self.cpu_s is not None and before is not None and after is not None:
            self.cpu_s += after - before
        else:
            self.cpu_s = None

    def cpu_per_request(self) -> float | None:
        return None if self.cpu_s is None else self.cpu_s / (self.requests * len(self.samples))


def _compare(name: str, subject: _Side, baseline: _Side) -> Comparison:
    cpu = subject.cpu_per_request(), baseline.cpu_per_request()
    cpu_s = (cpu[0], cpu[1]) if cpu[0] is not None and cpu[1] is not None else None
    return Comparison(name, subject.samples, baseline.samples, rate=True, cpu_s=cpu_s)


def measure(sizes: Sizes, synchronous: str, work: Path) -> list[Comparison]:
    scratch = work / synchronous.lower()
    db_url = f"sqlite:///{scratch / 'engine.db'}"
    key = _prepare(db_url)
    gateway_config = {"db_url": db_url, "sqlite_synchronous": synchronous}
    with served("gateway", gateway_config, scratch) as gateway:
        body, headers = _sample_answer(gateway, key)
        bare_config = {"path": "/v1/tasks", "status": 202, "body": body, "headers": headers}
        append_config = {**bare_config, "db_path": str(scratch / "append.db"), "sqlite_synchronous": synchronous}
        with served("bare", bare_config, scratch) as bare, served("append", append_config, scratch) as append:
            sides = [
                _Side(bare, sizes.bare_requests),
                _Side(append, sizes.append_requests),
                _Side(gateway, sizes.gateway_requests),
            ]
            for side in sides:
                run_load(
                    side.server.url,
                    requests(side.server.url, key, sizes.warmup),
                    concurrency=sizes.concurrency,
                    expect=202,
                )
            for _ in range(sizes.rounds):
                for side in sides:
                    side.round(key, sizes.concurrency)
    baseline, appended, subject = sides
    where = f"{sizes.concurrency} connections, sqlite {synchronous}"
    return [
        _compare(f"POST /v1/tasks?mode=async, {where}: gateway vs bare app", subject, baseline),
        _compare(f"(for scale) durable append only (sqlite3, group commit), {where}: vs bare app", appended, baseline),
    ]


def run(sizes: Sizes | None = None) -> list[Comparison]:
    sizes = sizes or Sizes.default()
    results: list[Comparison] = []
    with scratch_dir("aiplane-bench-submit-") as work:
        for synchronous in ("FULL", "NORMAL"):
            (work / synchronous.lower()).mkdir()
            results.extend(measure(sizes, synchronous, work))
    return results
