"""GET /v1/tasks/{id}/lineage: the workflow version, input hash and model version/endpoint behind a result; another
tenant gets 404."""

from __future__ import annotations

from fastapi.testclient import TestClient

from engine import Worker
from policies.lineage import input_hash
from tests.api.conftest import Keys, assert_problem, auth, in_state, wait_task


def test_lineage_of_a_task(client: TestClient, keys: Keys, worker: Worker) -> None:
    response = client.post(
        "/v1/tasks", json={"workflow": {"name": "echo"}, "input": {"claimId": "c-1"}}, headers=auth(keys.alice)
    )
    assert response.status_code == 202, response.text
    task = wait_task(client, keys.alice, response.json()["id"], in_state("succeeded"))
    lineage = client.get(f"/v1/tasks/{task['id']}/lineage", headers=auth(keys.carol))
    assert lineage.status_code == 200, lineage.text
    body = lineage.json()
    assert body["workflow"]["name"] == "echo"
    assert body["workflow"]["version"] == task["workflowVersion"]
    assert body["inputHash"] == input_hash({"claimId": "c-1"})
    [step] = body["steps"]
    assert (step["name"], step["decision"]["model"], step["decision"]["version"]) == ("predict", "echo", "v1")
    assert_problem(client.get(f"/v1/tasks/{task['id']}/lineage", headers=auth(keys.globex)), 404, "task-not-found")
