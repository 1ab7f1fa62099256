"""GET /v1/tasks/{id}/agent-decisions: each proposal of a task's agent step, the decision and what the action did;
another tenant gets 404."""

from __future__ import annotations

from fastapi.testclient import TestClient

from engine import Engine
from tests.api.conftest import Keys, Reply, Upstream, assert_problem, auth, in_state, wait_task


def test_agent_decisions_of_a_task(client: TestClient, keys: Keys, engine: Engine, upstream: Upstream) -> None:
    actions = [{"name": "notify", "description": "Tell the claimant.", "connector": {"name": "sink"}}]
    agent = {"goal": "Notify {{ input.claimId }}", "planner": {"model": "echo"}, "actions": actions}
    engine.register_workflow("agentic", {"steps": [{"name": "agent", "type": "agent", "agent": agent}]})
    upstream.script(
        "/models/echo/plan",
        Reply(body={"action": "notify", "arguments": {"text": "hi"}, "confidence": 0.8, "reasoning": "say hi"}),
        Reply(body={"done": True, "result": {"notified": True}, "reasoning": "done"}),
    )
    response = client.post(
        "/v1/tasks", json={"workflow": {"name": "agentic"}, "input": {"claimId": "c-9"}}, headers=auth(keys.alice)
    )
    assert response.status_code == 202, response.text
    with engine.worker(poll_interval=0.02):
        task = wait_task(client, keys.alice, response.json()["id"], in_state("succeeded"))

    found = client.get(f"/v1/tasks/{task['id']}/agent-decisions", headers=auth(keys.carol))
    assert found.status_code == 200, found.text
    notify, finished = found.json()["items"]
    assert (notify["stepName"], notify["step"], notify["action"], notify["decision"], notify["state"]) == (
        "agent",
        1,
        "notify",
        "allowed",
        "succeeded",
    )
    assert notify["arguments"] == {"text": "hi"}
    assert notify["observation"]["received"] == {"text": "hi"}
    assert (finished["decision"], finished["result"]) == ("done", {"notified": True})
    assert_problem(
        client.get(f"/v1/tasks/{task['id']}/agent-decisions", headers=auth(keys.globex)), 404, "task-not-found"
    )
