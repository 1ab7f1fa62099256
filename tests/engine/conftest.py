"""Fixtures of the engine tests: a real store (SQLite file or a schema of the session's PostgreSQL), a real
downstream HTTP server on 127.0.0.1, and engines whose workers poll fast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, StaticConnectorResolver, StaticModelResolver, Task, WorkerConfig
from tests.fixtures.downstream import Call, Downstream, Reply
from tests.fixtures.polling import assert_eventually

__all__ = ["Call", "Downstream", "Reply"]

REPO = Path(__file__).resolve().parents[2]

# Workers in tests poll often. Leases are long enough that a heartbeat starved by a loaded CI machine does not
# expire them (which would rightly re-run a step and break exactly-once counts); crash tests set their own.
FAST = {"poll_interval": 0.02, "lease": timedelta(seconds=10), "maintenance_interval": 0.05}
# Backoff small enough that a test waits milliseconds for its retries.
QUICK_RETRY = {"maxAttempts": 3, "backoff": {"initial": "10ms", "max": "50ms", "jitter": 0.1}}


# ---------------------------------------------------------------- databases


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'engine.db'}"


@pytest.fixture
def downstream() -> Iterator[Downstream]:
    server = Downstream()
    yield server
    server.close()


# ---------------------------------------------------------------- engines


EngineFactory = Callable[..., Engine]


@pytest.fixture
def make_engine(tmp_path: Path, downstream: Downstream) -> Iterator[EngineFactory]:
    """Engines on a given store whose model ``m`` and connector ``c`` point at the downstream server."""
    engines: list[Engine] = []

    def make(db_url: str, **kwargs: Any) -> Engine:
        kwargs.setdefault("data_dir", tmp_path / "data")
        kwargs.setdefault("model_resolver", model_resolver(downstream))
        kwargs.setdefault("connector_resolver", connector_resolver(downstream))
        # No fsync per commit: still safe against killed processes (what the tests exercise), much faster.
        kwargs.setdefault("sqlite_synchronous", "NORMAL")
        engine = Engine(db_url, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture
def engine(make_engine: EngineFactory, db_url: str) -> Engine:
    return make_engine(db_url)


def model_resolver(downstream: Downstream) -> StaticModelResolver:
    return StaticModelResolver({"m": [{"version": "v1", "url": downstream.url("/models/m"), "weight": 100}]})


def connector_resolver(downstream: Downstream) -> StaticConnectorResolver:
    return StaticConnectorResolver(
        {
            "c": {"type": "http", "http": {"url": downstream.url("/c/{step}"), "allowPrivateNetworks": True}},
            "slow": {
                "type": "http",
                "http": {"url": downstream.url("/slow"), "timeout": "200ms", "allowPrivateNetworks": True},
            },
        }
    )


def fast_worker(engine: Engine, **overrides: Any) -> Any:
    return engine.worker(WorkerConfig(**{**FAST, **overrides}))


def wait_done(engine: Engine, tenant: str, task_id: str, timeout: float = 20.0) -> Task:
    task = engine.wait(tenant, task_id, timeout, poll_interval=0.02)
    assert task.done, f"task still {task.state} at step {task.current_step} after {timeout}s"
    return task


def wait_state(engine: Engine, tenant: str, task_id: str, state: str, timeout: float = 20.0) -> Task:
    def check() -> Task:
        task = engine.get(tenant, task_id)
        assert task.state == state, f"task is {task.state} at step {task.current_step}, expected {state}"
        return task

    return assert_eventually(check, timeout=timeout, interval=0.02)


def connector_step(name: str, **extra: Any) -> dict[str, Any]:
    """A step calling connector ``c`` at path /c/<name>, sending ``{"step": name, ...}``."""
    step = {"name": name, "type": "connector", "connector": {"name": "c", "input": {"step": f"'{name}'"}}}
    step.update(extra)
    return step


def kill_worker_mid_call(
    db_url: str, tmp_path: Path, resolvers: dict[str, Any], *, downstream: Downstream, path: str
) -> None:
    """Run ``python -m engine.worker`` (static ``resolvers``) until it calls ``path`` once, then kill it with -9 while
    that call is held open; the call is released afterwards, so the downstream saw it and the worker never heard."""
    config = tmp_path / "resolvers.json"
    config.write_text(json.dumps(resolvers))
    gate = downstream.hold(path)
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "engine.worker", "--db", db_url, "--data-dir", str(tmp_path / "data"),
            "--resolvers", str(config), "--id", "doomed", "--lease", "1s", "--poll", "20ms",
            "--sqlite-synchronous", "NORMAL",
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert_eventually(lambda: downstream.count(path) == 1, timeout=60, interval=0.05)
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
        log.close()
        gate.set()
