"""Fixtures of the gateway tests: an engine on real SQLite with an in-process worker, a real HTTP server standing
in for models and connectors, API keys of two tenants, and the app served in-process or by a real uvicorn."""

from __future__ import annotations

import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api import GatewaySettings, create_api_key, create_app
from engine import Engine, StaticConnectorResolver, StaticModelResolver, Task, Worker, WorkerConfig
from tests.fixtures.downstream import Call, Reply
from tests.fixtures.downstream import Downstream as Upstream
from tests.fixtures.polling import assert_eventually

__all__ = ["Call", "Reply", "Upstream"]

with warnings.catch_warnings():
    # Starlette 1.x would rather its test client ran on httpx2; httpx is what the project ships and works.
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    # Imported here first, so the test modules' own imports find it loaded and warn no more.
    from fastapi.testclient import TestClient

FAST_WORKER = WorkerConfig(poll_interval=0.02, lease=timedelta(seconds=10), maintenance_interval=0.05)
QUICK_RETRY = {"maxAttempts": 2, "backoff": {"initial": "10ms", "max": "20ms", "jitter": 0.0}}
PROBLEM = "application/problem+json"


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


# ---------------------------------------------------------------- engine, workflows, keys


ECHO_SCHEMA = {
    "type": "object",
    "required": ["claimId"],
    "properties": {"claimId": {"type": "string"}, "amount": {"type": "number", "minimum": 0}},
}


def workflows() -> dict[str, dict[str, Any]]:
    return {
        # One model call: the task's result is what the model answered.
        "echo": {
            "inputSchema": ECHO_SCHEMA,
            "steps": [{"name": "predict", "type": "model", "model": {"name": "echo"}, "retry": QUICK_RETRY}],
        },
        # One connector call to /hold, which tests can hold open.
        "slow": {
            "steps": [
                {
                    "name": "call",
                    "type": "connector",
                    "connector": {"name": "hold", "input": {"step": "'call'"}},
                    "retry": QUICK_RETRY,
                }
            ]
        },
        # A human gate, then a connector call.
        "gated": {
            "steps": [
                {"name": "review", "type": "approval", "approval": {"approvers": {"roles": ["approver"]}}},
                {
                    "name": "publish",
                    "type": "connector",
                    "connector": {"name": "sink", "input": {"step": "'publish'"}},
                    "retry": QUICK_RETRY,
                },
            ]
        },
        # A connector call that fails at once (HTTP 400 is not retryable): the task is dead-lettered.
        "fragile": {
            "steps": [
                {
                    "name": "post",
                    "type": "connector",
                    "connector": {"name": "fragile", "input": {"step": "'post'"}},
                    "retry": {"maxAttempts": 1},
                }
            ]
        },
    }


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def engine_url(tmp_path: Path) -> str:
    """The gateway tests' store: a SQLite file (a test module overrides this to run on PostgreSQL too)."""
    return f"sqlite:///{tmp_path / 'engine.db'}"


def make_engine(url: str, data_dir: Path, upstream: Upstream) -> Engine:
    """An engine on ``url`` whose models and connectors are ``upstream``'s paths, with the test workflows."""

    def http(path: str) -> dict[str, Any]:
        return {"type": "http", "http": {"url": upstream.url(path), "allowPrivateNetworks": True}}

    engine = Engine(
        url,
        data_dir=data_dir,
        model_resolver=StaticModelResolver(
            {
                "echo": [{"version": "v1", "url": upstream.url("/models/echo"), "weight": 100}],
                # A canary that takes no traffic yet, and one that takes all of it.
                "canary": [
                    {"version": "v1", "url": upstream.url("/models/stable"), "weight": 100},
                    {"version": "v2", "url": upstream.url("/models/next"), "weight": 0},
                ],
                "flipped": [
                    {"version": "v1", "url": upstream.url("/models/stable"), "weight": 0},
                    {"version": "v2", "url": upstream.url("/models/next"), "weight": 100},
                ],
                "dark": [{"version": "v1", "url": upstream.url("/models/dark"), "weight": 0}],
                "gone": [{"version": "v1", "url": f"http://127.0.0.1:{closed_port()}", "weight": 100}],
            }
        ),
        connector_resolver=StaticConnectorResolver(
            {"hold": http("/hold"), "sink": http("/sink"), "fragile": http("/fragile")}
        ),
        sqlite_synchronous="NORMAL",
    )
    for name, spec in workflows().items():
        engine.register_workflow(name, spec)
    return engine


@pytest.fixture
def engine(engine_url: str, tmp_path: Path, upstream: Upstream) -> Iterator[Engine]:
    engine = make_engine(engine_url, tmp_path / "data", upstream)
    yield engine
    engine.close()


@pytest.fixture
def worker(engine: Engine) -> Iterator[Worker]:
    with engine.worker(FAST_WORKER) as running:
        yield running


@dataclass(frozen=True)
class Keys:
    """API keys: tenant acme (alice submits, bob approves, carol audits, root is admin) and tenant globex."""

    alice: str
    bob: str
    carol: str
    root: str
    globex: str
    globex_approver: str


@pytest.fixture
def keys(engine: Engine) -> Keys:
    return Keys(
        alice=create_api_key(engine, "acme", "alice", ["submitter"]),
        bob=create_api_key(engine, "acme", "bob", ["approver"]),
        carol=create_api_key(engine, "acme", "carol", ["auditor"]),
        root=create_api_key(engine, "acme", "root", ["admin"]),
        globex=create_api_key(engine, "globex", "gina", ["submitter", "auditor"]),
        globex_approver=create_api_key(engine, "globex", "gus", ["approver"]),
    )


def auth(key: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **headers}


# ---------------------------------------------------------------- the app


SETTINGS = GatewaySettings(sync_wait_default=20.0, sync_poll_interval=0.02)


@pytest.fixture
def settings() -> GatewaySettings:
    return SETTINGS


@pytest.fixture
def app(engine: Engine, settings: GatewaySettings) -> FastAPI:
    return create_app(engine, settings)


def app_without(engine: Engine, fast_path: type) -> FastAPI:
    """The gateway without one of its fast paths: the requests it would serve go to their FastAPI route."""
    app = create_app(engine)
    app.user_middleware = [m for m in app.user_middleware if cast(object, m.cls) is not fast_path]
    return app


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """The app in-process (lifespan included); no worker unless the test asks for ``worker``."""
    with TestClient(app, raise_server_exceptions=True) as test_client:
        yield test_client


class Served:
    """The app served by a real uvicorn on a free 127.0.0.1 port, in a thread."""

    def __init__(self, app: FastAPI) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", backlog=512, timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        assert_eventually(lambda: self.server.started, timeout=20, interval=0.02, message="uvicorn started")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture
def served(app: FastAPI) -> Iterator[Served]:
    server = Served(app)
    yield server
    server.close()


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.base_url, timeout=30) as http_client:
        yield http_client


# ---------------------------------------------------------------- helpers


def wait_task(
    client: TestClient | httpx.Client, key: str, task_id: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll GET /v1/tasks/{id} until ``check(task)`` holds; returns the task."""

    def look() -> dict[str, Any]:
        response = client.get(f"/v1/tasks/{task_id}", headers=auth(key))
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        assert check(task), f"task is {task['state']} at {task['currentStep']}"
        return task

    return assert_eventually(look, timeout=30, interval=0.02)


def done(task: dict[str, Any]) -> bool:
    return task["state"] in {"succeeded", "failed", "rejected", "cancelled", "dead_lettered"}


def in_state(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda task: task["state"] == state


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem document with ``status`` (and type ``.../<slug>``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["type"].startswith("https://aiplane.io/problems/")
    if slug is not None:
        assert problem["type"] == f"https://aiplane.io/problems/{slug}", problem
    assert problem["title"]
    assert problem["detail"]
    return problem


def field_names(problem: dict[str, Any]) -> set[str]:
    return {e["field"] for e in problem.get("errors") or []}


def engine_task(engine: Engine, tenant: str, task_id: str) -> Task:
    return engine.get(tenant, task_id)
