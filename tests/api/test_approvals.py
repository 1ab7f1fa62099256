"""Approvals through the gateway: list pending, approve and reject as the authenticated principal."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from engine import Worker
from tests.api.conftest import (
    Keys,
    Upstream,
    assert_problem,
    auth,
    done,
    field_names,
    in_state,
    wait_task,
)


def _waiting_approval(client: TestClient, keys: Keys) -> tuple[str, dict[str, Any]]:
    task_id = client.post("/v1/tasks", json={"workflow": {"name": "gated"}}, headers=auth(keys.alice)).json()["id"]
    wait_task(client, keys.alice, task_id, in_state("waiting"))
    pending = client.get(f"/v1/approvals?state=pending&taskId={task_id}", headers=auth(keys.bob)).json()["items"]
    assert len(pending) == 1
    return task_id, pending[0]


def test_list_and_approve(client: TestClient, keys: Keys, worker: Worker, upstream: Upstream) -> None:
    task_id, approval = _waiting_approval(client, keys)
    assert approval["taskId"] == task_id
    assert approval["step"] == "review"
    assert approval["state"] == "pending"
    assert approval["roles"] == ["approver"]
    listed = client.get("/v1/approvals", headers=auth(keys.carol)).json()["items"]  # pending is the default
    assert [a["id"] for a in listed] == [approval["id"]]

    response = client.post(
        f"/v1/approvals/{approval['id']}/approve", json={"reason": "looks fine"}, headers=auth(keys.bob)
    )
    assert response.status_code == 200, response.text
    decided = response.json()
    assert decided["state"] == "approved"
    assert [(d["approver"], d["decision"], d["reason"]) for d in decided["decisions"]] == [
        ("bob", "approve", "looks fine")
    ]
    assert wait_task(client, keys.alice, task_id, done)["state"] == "succeeded"
    assert upstream.count("/sink") == 1
    assert client.get("/v1/approvals", headers=auth(keys.bob)).json()["items"] == []
    everything = client.get("/v1/approvals?state=all", headers=auth(keys.bob)).json()["items"]
    assert [a["state"] for a in everything] == ["approved"]
    assert client.get(f"/v1/approvals/{approval['id']}", headers=auth(keys.carol)).json()["state"] == "approved"
    # Already decided.
    assert_problem(client.post(f"/v1/approvals/{approval['id']}/approve", headers=auth(keys.bob)), 409)


def test_reject_ends_the_task(client: TestClient, keys: Keys, worker: Worker, upstream: Upstream) -> None:
    task_id, approval = _waiting_approval(client, keys)
    problem = assert_problem(
        client.post(f"/v1/approvals/{approval['id']}/reject", json={}, headers=auth(keys.bob)), 422
    )
    assert field_names(problem) == {"reason"}
    response = client.post(
        f"/v1/approvals/{approval['id']}/reject", json={"approver": "bob", "reason": "forged"}, headers=auth(keys.bob)
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "rejected"
    task = wait_task(client, keys.alice, task_id, done)
    assert task["state"] == "rejected"
    assert upstream.count("/sink") == 0


def test_who_may_decide(client: TestClient, keys: Keys, worker: Worker) -> None:
    _, approval = _waiting_approval(client, keys)
    url = f"/v1/approvals/{approval['id']}/approve"
    # A submitter is not an approver.
    assert_problem(client.post(url, headers=auth(keys.alice)), 403, "forbidden")
    # Decisions are recorded as the caller, never on someone else's behalf.
    problem = assert_problem(client.post(url, json={"approver": "mallory"}, headers=auth(keys.bob)), 403)
    assert field_names(problem) == {"approver"}
    # Another tenant's approver does not even see it.
    assert_problem(client.post(url, headers=auth(keys.globex_approver)), 404, "approval-not-found")
    # The step names who decides (role approver): an admin is not one unless the workflow says so.
    assert_problem(client.post(url, headers=auth(keys.root)), 403, "not-authorized")
    assert client.post(url, headers=auth(keys.bob)).json()["state"] == "approved"
