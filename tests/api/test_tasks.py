"""The task lifecycle through the gateway: submit (async and sync), read, list, cancel, replay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from engine import Engine, Worker
from tests.api.conftest import (
    Keys,
    Reply,
    Upstream,
    assert_problem,
    auth,
    done,
    field_names,
    in_state,
    wait_task,
)


def test_async_submission_runs_to_completion(client: TestClient, keys: Keys, worker: Worker) -> None:
    response = client.post(
        "/v1/tasks",
        json={"workflow": {"name": "echo"}, "input": {"claimId": "c-1", "amount": 12.5}, "priority": "high"},
        headers=auth(keys.alice),
    )
    assert response.status_code == 202, response.text
    task = response.json()
    assert response.headers["location"] == f"/v1/tasks/{task['id']}"
    assert task["workflow"] == "echo"
    assert task["priority"] == "high"
    assert task["input"] == {"claimId": "c-1", "amount": 12.5}

    finished = wait_task(client, keys.alice, task["id"], done)
    assert finished["state"] == "succeeded"
    assert finished["result"] == {"path": "/models/echo/predict", "received": {"claimId": "c-1", "amount": 12.5}}
    assert [(s["name"], s["type"], s["state"], s["attempts"]) for s in finished["steps"]] == [
        ("predict", "model", "succeeded", 1)
    ]
    assert finished["finishedAt"] is not None
    assert finished["error"] is None


def test_sync_submission_returns_the_result(client: TestClient, keys: Keys, worker: Worker) -> None:
    response = client.post(
        "/v1/tasks?mode=sync",
        json={"workflow": {"name": "echo"}, "input": {"claimId": "c-2"}},
        headers=auth(keys.alice),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "succeeded"
    assert body["result"]["received"] == {"claimId": "c-2"}
    assert response.headers["location"] == f"/v1/tasks/{body['id']}"
    # The mode can also be a field of the body.
    response = client.post(
        "/v1/tasks",
        json={"workflow": {"name": "echo"}, "input": {"claimId": "c-3"}, "mode": "sync"},
        headers=auth(keys.alice),
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "succeeded"


def test_sync_submission_answers_202_when_the_wait_runs_out(
    client: TestClient, keys: Keys, worker: Worker, upstream: Upstream
) -> None:
    gate = upstream.hold("/hold")
    response = client.post(
        "/v1/tasks?mode=sync&wait=0.2", json={"workflow": {"name": "slow"}}, headers=auth(keys.alice)
    )
    assert response.status_code == 202, response.text
    task = response.json()
    assert not done(task)
    assert response.headers["location"] == f"/v1/tasks/{task['id']}"
    gate.set()
    assert wait_task(client, keys.alice, task["id"], done)["state"] == "succeeded"


def test_unknown_workflow_is_404_naming_the_field(client: TestClient, keys: Keys) -> None:
    response = client.post("/v1/tasks", json={"workflow": {"name": "nope"}}, headers=auth(keys.alice))
    problem = assert_problem(response, 404, "workflow-not-found")
    assert field_names(problem) == {"workflow.name"}
    response = client.post(
        "/v1/tasks",
        json={"workflow": {"name": "echo", "version": "nope"}, "input": {"claimId": "x"}},
        headers=auth(keys.alice),
    )
    assert field_names(assert_problem(response, 404, "workflow-not-found")) == {"workflow.version"}


def test_input_not_matching_the_input_schema_is_422_naming_the_fields(client: TestClient, keys: Keys) -> None:
    response = client.post(
        "/v1/tasks", json={"workflow": {"name": "echo"}, "input": {"amount": -1}}, headers=auth(keys.alice)
    )
    problem = assert_problem(response, 422, "input-invalid")
    assert field_names(problem) == {"input.claimId", "input.amount"}
    assert "input.claimId" in problem["detail"]


def test_request_fields_are_validated(client: TestClient, keys: Keys) -> None:
    bad = [
        ({"workflow": {"name": "echo"}, "priority": "urgent"}, "priority"),
        ({"workflow": {"name": "Not A Name"}}, "workflow.name"),
        ({"workflow": {"name": "echo"}, "sla": "soon"}, "sla"),
        ({"workflow": {"name": "echo"}, "deadline": "2030-01-01T00:00:00"}, "deadline"),  # no offset
        ({"workflow": {"name": "echo"}, "callbackUrl": "ftp://example.com"}, "callbackUrl"),
        ({"workflow": {"name": "echo"}, "input": [1, 2]}, "input"),
        ({"workflow": {"name": "echo"}, "surprise": True}, "surprise"),
        ({}, "workflow"),
    ]
    for body, field in bad:
        problem = assert_problem(client.post("/v1/tasks", json=body, headers=auth(keys.alice)), 422)
        assert field in field_names(problem), (body, problem)
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    response = client.post(
        "/v1/tasks",
        json={"workflow": {"name": "echo"}, "input": {"claimId": "x"}, "deadline": past},
        headers=auth(keys.alice),
    )
    assert field_names(assert_problem(response, 422)) == {"deadline"}
    both = {"workflow": {"name": "echo"}, "input": {"claimId": "x"}, "deadline": "2999-01-01T00:00:00Z", "sla": "5m"}
    assert field_names(assert_problem(client.post("/v1/tasks", json=both, headers=auth(keys.alice)), 422)) == {"sla"}


def test_deadline_sla_and_policy_annotations_are_kept(client: TestClient, keys: Keys, engine: Engine) -> None:
    response = client.post(
        "/v1/tasks",
        json={
            "workflow": {"name": "gated"},
            "sla": "PT10M",
            "policy": {"privacy": "pii", "retention": "30d", "approval": "required"},
            "callbackUrl": "https://hooks.example.com/done",
        },
        headers=auth(keys.alice),
    )
    assert response.status_code == 202, response.text
    task = client.get(response.headers["location"], headers=auth(keys.carol)).json()
    assert task["policy"] == {"privacy": "pii", "retention": "30d", "approval": "required", "subject": None}
    assert task["callbackUrl"] == "https://hooks.example.com/done"
    deadline = datetime.fromisoformat(task["deadline"])
    created = datetime.fromisoformat(task["createdAt"])
    assert timedelta(minutes=9) < deadline - created <= timedelta(minutes=10)
    response = client.post(
        "/v1/tasks",
        json={"workflow": {"name": "gated"}, "deadline": "2999-01-01T02:00:00+02:00"},
        headers=auth(keys.alice),
    )
    assert engine.get("acme", response.json()["id"]).deadline == datetime(2999, 1, 1, tzinfo=UTC)


def test_list_filters_and_pages(client: TestClient, keys: Keys, worker: Worker) -> None:
    ids = []
    for n in range(3):
        response = client.post(
            "/v1/tasks?mode=sync",
            json={"workflow": {"name": "echo"}, "input": {"claimId": f"c{n}"}},
            headers=auth(keys.alice),
        )
        ids.append(response.json()["id"])
    gated = client.post("/v1/tasks", json={"workflow": {"name": "gated"}}, headers=auth(keys.alice)).json()["id"]
    wait_task(client, keys.alice, gated, in_state("waiting"))

    listing = client.get("/v1/tasks?workflow=echo&state=succeeded&limit=2", headers=auth(keys.carol)).json()
    assert [t["id"] for t in listing["items"]] == [ids[2], ids[1]]  # newest first
    assert "input" not in listing["items"][0]
    after = client.get(
        f"/v1/tasks?workflow=echo&limit=2&cursor={listing['nextCursor']}", headers=auth(keys.carol)
    ).json()
    assert [t["id"] for t in after["items"]] == [ids[0]]
    assert after["nextCursor"] is None
    waiting = client.get("/v1/tasks?state=waiting", headers=auth(keys.alice)).json()
    assert [t["id"] for t in waiting["items"]] == [gated]
    assert_problem(client.get("/v1/tasks?state=bogus", headers=auth(keys.alice)), 422)
    assert_problem(client.get("/v1/tasks?limit=0", headers=auth(keys.alice)), 422)


def test_cancel_a_waiting_task(client: TestClient, keys: Keys, worker: Worker) -> None:
    task_id = client.post("/v1/tasks", json={"workflow": {"name": "gated"}}, headers=auth(keys.alice)).json()["id"]
    wait_task(client, keys.alice, task_id, in_state("waiting"))
    response = client.post(f"/v1/tasks/{task_id}/cancel", json={"reason": "duplicate claim"}, headers=auth(keys.alice))
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    # A second cancel does not apply to a finished task.
    assert_problem(client.post(f"/v1/tasks/{task_id}/cancel", headers=auth(keys.alice)), 409, "invalid-state")
    # Auditors read but do not cancel.
    assert_problem(client.post(f"/v1/tasks/{task_id}/cancel", headers=auth(keys.carol)), 403, "forbidden")


def test_replay_a_dead_lettered_task(client: TestClient, keys: Keys, worker: Worker, upstream: Upstream) -> None:
    upstream.script("/fragile", Reply(status=400, body={"error": "bad"}))
    task_id = client.post("/v1/tasks", json={"workflow": {"name": "fragile"}}, headers=auth(keys.alice)).json()["id"]
    dead = wait_task(client, keys.alice, task_id, done)
    assert dead["state"] == "dead_lettered"
    assert dead["error"] is not None
    letters = client.get("/v1/dead-letters", headers=auth(keys.alice)).json()["items"]
    assert [d["taskId"] for d in letters] == [task_id]

    upstream.script("/fragile", Reply(status=200, body={"ok": True}))
    response = client.post(f"/v1/tasks/{task_id}/replay", headers=auth(keys.alice))
    assert response.status_code == 200, response.text
    assert wait_task(client, keys.alice, task_id, done)["state"] == "succeeded"
    assert upstream.count("/fragile") == 2
    # Only dead-lettered tasks can be replayed.
    assert_problem(client.post(f"/v1/tasks/{task_id}/replay", headers=auth(keys.alice)), 409)
