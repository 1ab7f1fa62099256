"""http Connectors end to end through the engine, against a real HTTP server on 127.0.0.1: method, URL template,
headers from Secrets, the step idempotency key across retries, timeouts, and the SSRF guard."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from engine import Engine, StaticConnectorResolver, StaticSecretResolver, Task, TaskState
from engine.store.schema import attempts
from tests.connectors.conftest import EngineFactory
from tests.engine.conftest import QUICK_RETRY, fast_worker, wait_done
from tests.fixtures.downstream import Downstream, Reply

SECRETS = {"claims-api": {"token": "s3cr3t"}}


@pytest.fixture
def downstream() -> Iterator[Downstream]:
    server = Downstream()
    yield server
    server.close()


def http(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "http", "http": {"url": url, "allowPrivateNetworks": True, **extra}}


def make(make_engine: EngineFactory, connectors: dict[str, Any], secrets: dict[str, Any] | None = None) -> Engine:
    return make_engine(
        connector_resolver=StaticConnectorResolver(connectors),
        secret_resolver=StaticSecretResolver(SECRETS if secrets is None else secrets),
    )


def run(engine: Engine, connector: str, data: Any, *, retry: dict[str, Any] | None = None, **step: Any) -> Task:
    name = f"wf-{uuid.uuid4().hex[:8]}"
    call = {"name": "call", "type": "connector", "connector": {"name": connector}, "retry": retry or QUICK_RETRY}
    engine.register_workflow(name, {"steps": [{**call, **step}]})
    with fast_worker(engine):
        return wait_done(engine, "acme", engine.submit("acme", name, data).id)


def attempt_errors(engine: Engine, task_id: str) -> list[str | None]:
    with engine.db.read() as conn:
        found = conn.execute(
            sa.select(attempts.c.error).where(attempts.c.task_id == task_id).order_by(attempts.c.number)
        ).scalars()
        return [error["kind"] if error else None for error in found]


def test_method_url_template_and_headers_from_secrets(make_engine: EngineFactory, downstream: Downstream) -> None:
    headers = [
        {"name": "X-Api-Key", "valueFrom": {"name": "claims-api", "key": "token"}},
        {"name": "X-Source", "value": "aiplane"},
    ]
    engine = make(
        make_engine,
        {
            "notes": http(downstream.url("/claims/{claimId}/notes"), method="PUT", headers=headers),
            "lookup": http(downstream.url("/claims/{claimId}"), method="GET"),
        },
    )
    downstream.script("/claims/C%201%2F2/notes", Reply(body={"stored": True}))
    task = run(engine, "notes", {"claimId": "C 1/2", "note": "hail damage"})
    assert task.state == TaskState.SUCCEEDED, task.error
    assert task.result == {"stored": True}
    # The placeholder is URL-encoded: input cannot add path segments.
    (call,) = downstream.calls["/claims/C%201%2F2/notes"]
    assert call.method == "PUT"
    assert call.body == {"claimId": "C 1/2", "note": "hail damage"}
    assert call.headers["X-Api-Key"] == "s3cr3t"
    assert call.headers["X-Source"] == "aiplane"
    assert call.headers["Idempotency-Key"] == engine.steps("acme", task.id)[0].idempotency_key

    # GET: no body; the input fields the URL did not use become query parameters.
    task = run(engine, "lookup", {"claimId": "C-9", "expand": "notes", "limit": 5})
    assert task.state == TaskState.SUCCEEDED, task.error
    (call,) = downstream.calls["/claims/C-9"]
    assert call.method == "GET"
    assert call.body is None
    assert sorted(call.query.split("&")) == ["expand=notes", "limit=5"]


def test_retries_send_the_same_idempotency_key(make_engine: EngineFactory, downstream: Downstream) -> None:
    engine = make(make_engine, {"pay": http(downstream.url("/pay"))})
    downstream.script("/pay", Reply(503), Reply(500), Reply(200, {"paid": True}))
    task = run(engine, "pay", {"amount": 10})
    assert task.state == TaskState.SUCCEEDED, task.error
    calls = downstream.calls["/pay"]
    assert len(calls) == 3
    (run_,) = engine.steps("acme", task.id)
    assert {c.headers["Idempotency-Key"] for c in calls} == {run_.idempotency_key}
    assert attempt_errors(engine, task.id) == ["ServiceUnavailable", "InternalServerError", None]

    # Another task's step is another operation: another key.
    run(engine, "pay", {"amount": 10})
    assert downstream.calls["/pay"][-1].headers["Idempotency-Key"] != run_.idempotency_key


def test_a_slow_server_times_out_and_the_retry_succeeds(make_engine: EngineFactory, downstream: Downstream) -> None:
    engine = make(
        make_engine,
        {
            "slow": http(downstream.url("/slow"), timeout="200ms"),
            # The step's timeout bounds the call too, when it is the shorter.
            "patient": http(downstream.url("/patient"), timeout="1m"),
        },
    )
    downstream.script("/slow", Reply(delay=2.0), Reply(body={"ok": 1}))
    task = run(engine, "slow", {})
    assert task.state == TaskState.SUCCEEDED, task.error
    assert task.result == {"ok": 1}
    assert attempt_errors(engine, task.id) == ["Timeout", None]
    calls = downstream.calls["/slow"]
    assert calls[0].headers["Idempotency-Key"] == calls[1].headers["Idempotency-Key"]

    downstream.script("/patient", Reply(delay=2.0))
    task = run(engine, "patient", {}, retry={"maxAttempts": 1}, timeout="300ms")
    assert task.state == TaskState.DEAD_LETTERED
    assert task.error is not None
    assert task.error["kind"] == "Timeout"


def test_a_missing_header_secret_is_a_clear_error(make_engine: EngineFactory, downstream: Downstream) -> None:
    headers = [{"name": "Authorization", "valueFrom": {"name": "claims-api", "key": "bearer"}}]
    engine = make(make_engine, {"api": http(downstream.url("/api"), headers=headers)})
    task = run(engine, "api", {})
    assert task.state == TaskState.DEAD_LETTERED
    assert task.error is not None
    assert task.error["kind"] == "SecretUnavailable"
    assert "header Authorization needs secret claims-api/bearer" in task.error["message"]
    assert downstream.count("/api") == 0


def test_redirects_are_followed_when_the_target_passes_the_guard(
    make_engine: EngineFactory, downstream: Downstream
) -> None:
    engine = make(make_engine, {"moved": http(downstream.url("/old"))})
    downstream.script("/old", Reply(307, headers={"Location": "/new"}))
    downstream.script("/new", Reply(body={"here": True}))
    task = run(engine, "moved", {"n": 1})
    assert task.state == TaskState.SUCCEEDED, task.error
    assert task.result == {"here": True}
    # 307 repeats the request: same method, body and key.
    (new,) = downstream.calls["/new"]
    assert (new.method, new.body) == ("POST", {"n": 1})
    assert new.headers["Idempotency-Key"] == downstream.calls["/old"][0].headers["Idempotency-Key"]


def test_private_destinations_are_refused_unless_the_connector_allows_them(
    make_engine: EngineFactory, downstream: Downstream
) -> None:
    port = downstream.server.server_address[1]
    guarded = {
        "loopback": f"http://127.0.0.1:{port}/x",
        "loopback-name": f"http://localhost:{port}/x",
        "loopback-decimal": f"http://2130706433:{port}/x",
        "loopback-v6": f"http://[::1]:{port}/x",
        "loopback-mapped": f"http://[::ffff:127.0.0.1]:{port}/x",
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "private": "http://10.1.2.3/x",
        "unspecified": f"http://0.0.0.0:{port}/x",
        # The host comes from task input here: input cannot steer the call either.
        "templated": "http://{host}/x",
    }
    connectors = {name: {"type": "http", "http": {"url": url}} for name, url in guarded.items()}
    connectors["allowed"] = http(f"http://localhost:{port}/x")
    engine = make(make_engine, connectors)
    for name in guarded:
        task = run(engine, name, {"host": "169.254.169.254"})
        assert task.state == TaskState.DEAD_LETTERED, name
        assert task.error is not None
        assert task.error["kind"] == "DestinationRefused", (name, task.error)
        assert "set allowPrivateNetworks" in task.error["message"]
        assert engine.steps("acme", task.id)[0].attempts == 1, name
    assert downstream.count("/x") == 0
    assert run(engine, "allowed", {}).state == TaskState.SUCCEEDED
    assert downstream.count("/x") == 1
