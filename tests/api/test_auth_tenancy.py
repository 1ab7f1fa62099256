"""API keys, roles, and tenant isolation: another tenant's tasks, approvals, traces and events are not found."""

from __future__ import annotations

from fastapi.testclient import TestClient

from engine import Engine, Worker
from tests.api.conftest import Keys, assert_problem, auth, done, in_state, wait_task


def test_requests_without_a_valid_key_are_401(client: TestClient, keys: Keys) -> None:
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic YWxpY2U6c2VjcmV0"}):
        response = client.get("/v1/tasks", headers=headers)
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    response = client.get("/v1/tasks", headers=auth("aip_not-a-key"))
    assert_problem(response, 401, "invalid-api-key")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert_problem(client.post("/v1/models/echo/predict", json={}), 401)


def test_revoked_keys_stop_working(client: TestClient, engine: Engine) -> None:
    keys = client.app.state.gateway.keys  # type: ignore[attr-defined]
    key = keys.create("acme", "temp", ["auditor"])
    assert client.get("/v1/tasks", headers=auth(key)).status_code == 200
    principal = keys.verify(key)
    assert principal is not None
    assert (principal.tenant, principal.name, principal.roles) == ("acme", "temp", frozenset({"auditor"}))
    assert keys.revoke(principal.key_id)
    assert_problem(client.get("/v1/tasks", headers=auth(key)), 401, "invalid-api-key")


def test_roles_gate_writes(client: TestClient, keys: Keys) -> None:
    body = {"workflow": {"name": "gated"}}
    assert_problem(client.post("/v1/tasks", json=body, headers=auth(keys.carol)), 403, "forbidden")  # auditor
    assert_problem(client.post("/v1/tasks", json=body, headers=auth(keys.bob)), 403, "forbidden")  # approver
    assert client.post("/v1/tasks", json=body, headers=auth(keys.root)).status_code == 202  # admin
    assert client.get("/v1/tasks", headers=auth(keys.carol)).status_code == 200  # every role reads


def test_other_tenants_see_nothing(client: TestClient, keys: Keys, worker: Worker) -> None:
    task_id = client.post("/v1/tasks", json={"workflow": {"name": "gated"}}, headers=auth(keys.alice)).json()["id"]
    wait_task(client, keys.alice, task_id, in_state("waiting"))
    approval = client.get("/v1/approvals", headers=auth(keys.bob)).json()["items"][0]
    # Acme sees its task, approval, trace and events.
    for path in (f"/v1/tasks/{task_id}", f"/v1/tasks/{task_id}/trace", f"/v1/tasks/{task_id}/events"):
        assert client.get(path, headers=auth(keys.alice)).status_code == 200, path
    # Globex gets 404 for each, as for ids that do not exist.
    outsider = auth(keys.globex)
    assert_problem(client.get(f"/v1/tasks/{task_id}", headers=outsider), 404, "task-not-found")
    assert_problem(client.get(f"/v1/tasks/{task_id}/trace", headers=outsider), 404, "task-not-found")
    assert_problem(client.get(f"/v1/tasks/{task_id}/events", headers=outsider), 404, "task-not-found")
    assert_problem(client.post(f"/v1/tasks/{task_id}/cancel", headers=outsider), 404, "task-not-found")
    assert_problem(client.post(f"/v1/tasks/{task_id}/replay", headers=outsider), 404, "task-not-found")
    assert_problem(client.get(f"/v1/approvals/{approval['id']}", headers=outsider), 404, "approval-not-found")
    assert_problem(
        client.post(f"/v1/approvals/{approval['id']}/reject", json={"reason": "x"}, headers=auth(keys.globex_approver)),
        404,
        "approval-not-found",
    )
    assert client.get("/v1/tasks", headers=outsider).json()["items"] == []
    assert client.get("/v1/approvals?state=all", headers=auth(keys.globex_approver)).json()["items"] == []
    assert client.get(f"/v1/approvals?taskId={task_id}", headers=outsider).json()["items"] == []
    # Nothing changed for acme.
    assert client.get(f"/v1/tasks/{task_id}", headers=auth(keys.alice)).json()["state"] == "waiting"
    assert client.post(f"/v1/approvals/{approval['id']}/approve", headers=auth(keys.bob)).status_code == 200
    assert wait_task(client, keys.alice, task_id, done)["state"] == "succeeded"
