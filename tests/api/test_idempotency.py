"""Idempotency-Key on POST /v1/tasks: the stored first response, the mismatch, the in-flight conflict, and one
task and one execution under 100 concurrent submissions against a real uvicorn."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from fastapi.testclient import TestClient

from engine import Engine, Worker
from tests.api.conftest import (
    Keys,
    Served,
    Upstream,
    assert_problem,
    auth,
    done,
    field_names,
    wait_task,
)
from tests.fixtures.polling import assert_eventually

BODY = {"workflow": {"name": "echo"}, "input": {"claimId": "c-1"}}


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
