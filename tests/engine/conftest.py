"""Fixtures of the engine tests: a real store (SQLite file or a schema of the session's PostgreSQL), a real
downstream HTTP server on 127.0.0.1, and engines whose workers poll fast with tiny leases."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from engine import Engine, StaticConnectorResolver, StaticModelResolver, Task, WorkerConfig
from tests.fixtures.polling import assert_eventually

# Workers in tests: poll often, short leases (a killed worker's step is retried within about a second).
FAST = {"poll_interval": 0.02, "lease": timedelta(seconds=1), "maintenance_interval": 0.05}
# Backoff small enough that a test waits milliseconds for its retries.
QUICK_RETRY = {"maxAttempts": 3, "backoff": {"initial": "10ms", "max": "50ms", "jitter": 0.1}}


# ---------------------------------------------------------------- databases


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh schema in the session's PostgreSQL, selected through the connection's search_path."""
    postgres = request.getfixturevalue("postgres")
    schema = f"engine_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.libpq_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = make_url(postgres.dsn).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with psycopg.connect(postgres.libpq_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'engine.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Parametrises a test over both stores."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'engine.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


# ---------------------------------------------------------------- a real downstream


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    path: str
    method: str
    headers: dict[str, str]
    body: Any


class Downstream:
    """A tiny HTTP server: records every call, answers from per-path scripts (the last reply repeats), echoes
    the request body by default, and can hold a path's requests until released."""

    def __init__(self) -> None:
        self.calls: dict[str, list[Call]] = defaultdict(list)
        self._scripts: dict[str, list[Reply]] = {}
        self._gates: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        downstream = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                body = json.loads(raw) if raw else None
                reply = downstream._record(Call(path, self.command, dict(self.headers.items()), body))
                gate = downstream._gates.get(path)
                if gate is not None:
                    gate.wait(60)
                if reply.delay:
                    time.sleep(reply.delay)
                payload = reply.body if reply.body is not None else {"path": path, "received": body}
                data = json.dumps(payload).encode()
                # The caller may be gone (a killed worker, a timed-out request): nothing to answer then.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[path] = list(replies)

    def hold(self, path: str) -> threading.Event:
        """Requests to ``path`` wait until the returned event is set."""
        gate = self._gates[path] = threading.Event()
        return gate

    def count(self, path: str) -> int:
        with self._lock:
            return len(self.calls[path])

    def _record(self, call: Call) -> Reply:
        with self._lock:
            self.calls[call.path].append(call)
            script = self._scripts.get(call.path)
            if not script:
                return Reply()
            return script.pop(0) if len(script) > 1 else script[0]

    def close(self) -> None:
        for gate in self._gates.values():
            gate.set()
        self.server.shutdown()
        self.server.server_close()


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
