"""Every error is an RFC 9457 problem document: type, title, status, detail, and the offending field."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.testclient import TestClient

from engine import Worker
from tests.api.conftest import Keys, assert_problem, auth, field_names, in_state, wait_task

MiB = 1024 * 1024


def test_malformed_json_is_400(client: TestClient, keys: Keys) -> None:
    response = client.post(
        "/v1/tasks", content=b'{"workflow": ', headers=auth(keys.alice, **{"Content-Type": "application/json"})
    )
    problem = assert_problem(response, 400, "malformed-body")
    assert field_names(problem) == {"body"}
    assert problem["instance"] == "/v1/tasks"


def test_validation_errors_name_the_fields_and_where_they_are(client: TestClient, keys: Keys) -> None:
    response = client.get("/v1/tasks?limit=9999&state=nope", headers=auth(keys.alice))
    problem = assert_problem(response, 422, "validation-failed")
    assert {(e["field"], e["location"]) for e in problem["errors"]} == {("limit", "query"), ("state", "query")}
    assert "limit" in problem["detail"]
    response = client.post("/v1/tasks", json={"workflow": {"name": "echo", "extra": 1}}, headers=auth(keys.alice))
    assert {(e["field"], e["location"]) for e in assert_problem(response, 422)["errors"]} == {
        ("workflow.extra", "body")
    }


def test_routing_errors(client: TestClient, keys: Keys) -> None:
    assert_problem(client.get("/v2/everything", headers=auth(keys.alice)), 404, "not-found")
    response = client.delete("/v1/tasks", headers=auth(keys.alice))
    assert_problem(response, 405, "method-not-allowed")
    assert "GET" in response.headers["allow"]


def test_engine_errors(client: TestClient, keys: Keys, worker: Worker) -> None:
    problem = assert_problem(client.get("/v1/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV", headers=auth(keys.alice)), 404)
    assert problem["type"].endswith("/task-not-found")
    assert problem["taskId"] == "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    task_id = client.post("/v1/tasks", json={"workflow": {"name": "gated"}}, headers=auth(keys.alice)).json()["id"]
    wait_task(client, keys.alice, task_id, in_state("waiting"))
    assert_problem(client.post(f"/v1/tasks/{task_id}/replay", headers=auth(keys.alice)), 409, "invalid-state")


def test_oversized_bodies_are_413(client: TestClient, keys: Keys) -> None:
    big = b'{"workflow": {"name": "echo"}, "input": {"doc": "' + b"x" * (10 * MiB) + b'"}}'
    response = client.post("/v1/tasks", content=big, headers=auth(keys.alice, **{"Content-Type": "application/json"}))
    assert_problem(response, 413, "payload-too-large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the body is counted as it streams
        for _ in range(11):
            yield b"x" * MiB

    response = client.post(
        "/v1/models/echo/predict", content=chunks(), headers=auth(keys.alice, **{"Content-Type": "application/json"})
    )
    assert_problem(response, 413, "payload-too-large")


def test_auth_errors_are_problems_too(client: TestClient, keys: Keys) -> None:
    assert_problem(client.get("/v1/approvals"), 401, "unauthorized")
    assert_problem(client.post("/v1/tasks", json={}, headers=auth(keys.carol)), 403, "forbidden")


def test_json_that_is_not_plain_json_is_refused_naming_the_field(client: TestClient, keys: Keys) -> None:
    headers = auth(keys.alice, **{"Content-Type": "application/json"})
    cases = {
        b'{"workflow": {"name": "gated"}, "input": {"x": NaN}}': "input.x",
        b'{"workflow": {"name": "gated"}, "input": {"x": [1, 1e999]}}': "input.x[1]",
        b'{"workflow": {"name": "gated"}, "input": {"x": "\\ud800"}}': "input.x",
    }
    for body, field in cases.items():
        problem = assert_problem(client.post("/v1/tasks", content=body, headers=headers), 422, "validation-failed")
        assert field_names(problem) == {field}, body


def test_nesting_is_bounded(client: TestClient, keys: Keys) -> None:
    headers = auth(keys.alice, **{"Content-Type": "application/json"})

    def nested(depth: int) -> bytes:
        return b'{"workflow": {"name": "gated"}, "input": {"a": ' + b"[" * depth + b"]" * depth + b"}}"

    assert field_names(assert_problem(client.post("/v1/tasks", content=nested(100), headers=headers), 422)) == {"input"}
    # Deeper than the JSON parser goes: refused as unreadable.
    assert_problem(client.post("/v1/tasks", content=nested(100_000), headers=headers), 400)


def test_malformed_ids_and_cursors_are_422_unknown_ones_404(client: TestClient, keys: Keys) -> None:
    headers = auth(keys.alice)
    assert field_names(assert_problem(client.get("/v1/tasks/not-an-id", headers=headers), 422)) == {"taskId"}
    assert field_names(assert_problem(client.get("/v1/tasks?cursor=%00", headers=headers), 422)) == {"cursor"}
    assert_problem(client.get("/v1/approvals/01ARZ3NDEKTSV4RRFFQ69G5FAV", headers=headers), 404, "approval-not-found")
