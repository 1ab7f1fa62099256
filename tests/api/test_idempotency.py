"""Idempotency-Key on POST /v1/tasks: the stored first response, the mismatch, the in-flight conflict, and one
task and one execution under 100 concurrent submissions against a real uvicorn; on SQLite and on PostgreSQL, and on
PostgreSQL also with the 100 spread over two gateways (two engines, two uvicorns, two workers) on one store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api import create_api_key, create_app
from engine import Engine, Worker
from engine.runtime.intake import RequestKey, Submission
from tests.api.conftest import (
    FAST_WORKER,
    SETTINGS,
    Keys,
    Served,
    Upstream,
    assert_problem,
    auth,
    done,
    field_names,
    make_engine,
    wait_task,
)
from tests.fixtures.polling import assert_eventually

BODY = {"workflow": {"name": "echo"}, "input": {"claimId": "c-1"}}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every test here on both stores: the key claim is the database's (a primary key on SQLite's single writer,
    ``INSERT ... ON CONFLICT DO NOTHING`` waiting on the other transaction on PostgreSQL)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'engine.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def test_same_key_same_body_returns_the_stored_first_response(client: TestClient, keys: Keys, engine: Engine) -> None:
    first = client.post("/v1/tasks", json=BODY, headers=auth(keys.alice, **{"Idempotency-Key": "k-1"}))
    assert first.status_code == 202, first.text
    again = client.post("/v1/tasks", json=BODY, headers=auth(keys.alice, **{"Idempotency-Key": "k-1"}))
    assert again.status_code == first.status_code
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(engine.list("acme").items) == 1
    # The key is the tenant's: another tenant may use the same one for its own task.
    other = client.post("/v1/tasks", json=BODY, headers=auth(keys.globex, **{"Idempotency-Key": "k-1"}))
    assert other.status_code == 202
    assert other.json()["id"] != first.json()["id"]


def test_same_key_other_body_is_422(client: TestClient, keys: Keys) -> None:
    headers = auth(keys.alice, **{"Idempotency-Key": "k-2"})
    assert client.post("/v1/tasks", json=BODY, headers=headers).status_code == 202
    other = {"workflow": {"name": "echo"}, "input": {"claimId": "c-2"}}
    problem = assert_problem(client.post("/v1/tasks", json=other, headers=headers), 422, "idempotency-key-mismatch")
    assert field_names(problem) == set()
    assert "different request body" in problem["detail"]


def test_a_failed_request_leaves_no_record_behind(client: TestClient, keys: Keys) -> None:
    headers = auth(keys.alice, **{"Idempotency-Key": "k-3"})
    bad = {"workflow": {"name": "echo"}, "input": {}}
    assert_problem(client.post("/v1/tasks", json=bad, headers=headers), 422, "input-invalid")
    # Fixed and sent again with the same key: accepted.
    assert client.post("/v1/tasks", json=BODY, headers=headers).status_code == 202


def test_key_longer_than_255_characters_is_400(client: TestClient, keys: Keys) -> None:
    response = client.post("/v1/tasks", json=BODY, headers=auth(keys.alice, **{"Idempotency-Key": "k" * 256}))
    problem = assert_problem(response, 400, "idempotency-key-invalid")
    assert problem["errors"] == [
        {"field": "Idempotency-Key", "location": "header", "message": "must be 1-255 characters"}
    ]
    ok = client.post("/v1/tasks", json=BODY, headers=auth(keys.alice, **{"Idempotency-Key": "k" * 255}))
    assert ok.status_code == 202


def test_a_request_while_the_first_is_in_flight_is_409(
    http: httpx.Client, keys: Keys, worker: Worker, upstream: Upstream
) -> None:
    gate = upstream.hold("/hold")
    body = {"workflow": {"name": "slow"}, "mode": "sync"}
    headers = auth(keys.alice, **{"Idempotency-Key": "k-4"})
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(http.post, "/v1/tasks?wait=20", json=body, headers=headers)
        assert_eventually(lambda: upstream.count("/hold") == 1, timeout=20, interval=0.02)
        problem = assert_problem(http.post("/v1/tasks", json=body, headers=headers), 409, "idempotency-key-in-flight")
        assert "retry" in problem["detail"]
        gate.set()
        response = first.result(timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "succeeded"
    replay = http.post("/v1/tasks", json=body, headers=headers)
    assert (replay.status_code, replay.json()) == (200, response.json())


def test_100_concurrent_submissions_with_one_key_make_one_task_and_one_execution(
    served: Served, keys: Keys, engine: Engine, worker: Worker, upstream: Upstream
) -> None:
    headers = auth(keys.alice, **{"Idempotency-Key": "hot-key"})
    start = threading.Barrier(100)
    # One client, 100 connections: every request has its own connection and thread, all released at once.
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    with httpx.Client(base_url=served.base_url, timeout=60, limits=limits) as http:

        def submit(_: int) -> httpx.Response:
            start.wait()
            return http.post("/v1/tasks", json=BODY, headers=headers)

        with ThreadPoolExecutor(100) as pool:
            responses = list(pool.map(submit, range(100)))

    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {202, 409}, statuses
    accepted = [r.json() for r in responses if r.status_code == 202]
    assert accepted
    assert len({t["id"] for t in accepted}) == 1
    for conflict in (r for r in responses if r.status_code == 409):
        assert_problem(conflict, 409, "idempotency-key-in-flight")
        assert conflict.headers["retry-after"] == "1"

    tasks = engine.list("acme").items
    assert [t.id for t in tasks] == [accepted[0]["id"]]
    with httpx.Client(base_url=served.base_url) as http:
        assert wait_task(http, keys.alice, tasks[0].id, done)["state"] == "succeeded"
    assert upstream.count("/models/echo/predict") == 1


@pytest.fixture
def two_gateways(pg_url: str, tmp_path: Path, upstream: Upstream) -> Iterator[tuple[Engine, list[Served]]]:
    """Two gateways as two pods would be: an engine each (own pool, own batcher, own caches), each served by its own
    uvicorn and worked by its own worker, on one PostgreSQL schema."""
    with ExitStack() as stack:
        servers: list[Served] = []
        engines: list[Engine] = []
        for n in range(2):
            engine = make_engine(pg_url, tmp_path / f"data-{n}", upstream)
            stack.callback(engine.close)
            engines.append(engine)
            stack.enter_context(engine.worker(FAST_WORKER))
            server = Served(create_app(engine, SETTINGS))
            stack.callback(server.close)
            servers.append(server)
        yield engines[0], servers


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_100_concurrent_submissions_with_one_key_over_two_gateways_on_postgres(
    two_gateways: tuple[Engine, list[Served]], upstream: Upstream, mode: str
) -> None:
    engine, servers = two_gateways
    key = create_api_key(engine, "acme", "alice", ["submitter"])
    headers = auth(key, **{"Idempotency-Key": f"hot-{mode}"})
    body = {**BODY, "mode": mode}
    start = threading.Barrier(100)
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    with ExitStack() as stack:
        clients = [stack.enter_context(httpx.Client(base_url=s.base_url, timeout=60, limits=limits)) for s in servers]

        def submit(n: int) -> httpx.Response:
            start.wait()
            return clients[n % 2].post("/v1/tasks?wait=20", json=body, headers=headers)

        with ThreadPoolExecutor(100) as pool:
            responses = list(pool.map(submit, range(100)))

        # async: 202 with the new task, stored as the key's answer in the task's own commit; sync: 200 with the
        # finished task, stored once it is done, and 409 to everyone asking meanwhile.
        first_status = 202 if mode == "async" else 200
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {first_status, 409}, statuses
        answers = [r for r in responses if r.status_code == first_status]
        assert answers, statuses
        # Equal as JSON, not byte for byte: PostgreSQL's jsonb keeps the stored response's keys in its own order.
        answer: dict[str, Any] = answers[0].json()
        assert all(r.json() == answer for r in answers)
        for conflict in (r for r in responses if r.status_code == 409):
            assert_problem(conflict, 409, "idempotency-key-in-flight")
            assert conflict.headers["retry-after"] == "1"

        tasks = engine.list("acme").items
        assert [t.id for t in tasks] == [answer["id"]]
        finished = wait_task(clients[0], key, answer["id"], done)
        assert finished["state"] == "succeeded"
        assert upstream.count("/models/echo/predict") == 1

        # Once answered, either gateway replays the stored first response; another body under the key is 422.
        for client in clients:
            again = client.post("/v1/tasks", json=body, headers=headers)
            assert (again.status_code, again.json()) == (first_status, answer)
            assert again.headers["idempotent-replayed"] == "true"
            other = {**body, "input": {"claimId": "c-2"}}
            assert_problem(client.post("/v1/tasks", json=other, headers=headers), 422, "idempotency-key-mismatch")
        assert len(engine.list("acme").items) == 1


@pytest.mark.parametrize("scope", ["request", "task"])
def test_batches_with_the_same_keys_in_opposite_orders_on_two_gateways_do_not_deadlock(
    pg_url: str, tmp_path: Path, upstream: Upstream, scope: str
) -> None:
    """Each gateway writes a batch of submissions in one transaction; two batches taking the same keys (request
    Idempotency-Keys, or a Kafka source's task keys) in opposite orders waited on each other's rows until PostgreSQL
    aborted one as a deadlock, failing every submission in it. Keys are taken in one order now."""
    engines = [make_engine(pg_url, tmp_path / f"data-{n}", upstream) for n in range(2)]
    try:
        for round_ in range(10):
            keys = [f"r{round_}-{n:02}" for n in range(16)]
            start = threading.Barrier(2)

            def submit(n: int, keys: list[str] = keys, start: threading.Barrier = start) -> list[object]:
                batch = [
                    Submission(
                        tenant="acme",
                        workflow="echo",
                        input={"claimId": key},
                        **(
                            {"request": RequestKey(key=key, fingerprint=key, respond=lambda t, _: {"id": t.id})}
                            if scope == "request"
                            else {"idempotency_key": key}
                        ),
                    )
                    for key in (keys if n == 0 else keys[::-1])
                ]
                start.wait()
                return list(engines[n].submit_many(batch))

            with ThreadPoolExecutor(2) as pool:
                first, second = pool.map(submit, range(2))
            assert not [o for o in [*first, *second] if isinstance(o, Exception)]
        assert len(engines[0].list("acme", limit=500).items) == 160
    finally:
        for engine in engines:
            engine.close()
