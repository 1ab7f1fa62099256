"""Separation of duties: where a governing Policy's approval rule asks for it, the submitter of a task may not
approve it; another approver may, and the submitter may still reject it."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from fastapi.testclient import TestClient

from api import create_api_key
from api.auth import follow_policies
from crds.policy import Policy
from engine import Engine, Worker
from policies.access import separation_required, separation_violation
from policies.effective import Target
from policies.sources import PolicySet
from tests.api.conftest import Keys, assert_problem, auth, done, in_state, wait_task


def _policy(separation: bool) -> Policy:
    return Policy.model_validate(
        {
            "metadata": {"name": "four-eyes", "namespace": "claims", "generation": 4},
            "spec": {"approvals": [{"name": "large", "when": "true", "separationOfDuties": separation}]},
        }
    )


def test_separation_is_what_the_policies_say() -> None:
    assert not separation_required([], default=False)
    assert separation_required([], default=True)
    assert separation_required([_policy(False), _policy(True)])  # any rule asking for it wins
    assert not separation_required([_policy(False)])
    assert separation_violation("root", "root", required=True) is not None
    assert separation_violation("root", "root", required=False) is None
    assert separation_violation("alice", "bob", required=True) is None
    assert separation_violation(None, "bob", required=True) is None


@pytest.fixture
def sam(engine: Engine) -> str:
    """An API key that may both submit and approve."""
    return create_api_key(engine, "acme", "sam", ["submitter", "approver"])


def _gated(client: TestClient, key: str) -> tuple[str, str]:
    task_id: str = client.post("/v1/tasks", json={"workflow": {"name": "gated"}}, headers=auth(key)).json()["id"]
    wait_task(client, key, task_id, in_state("waiting"))
    approvals = client.get(f"/v1/approvals?taskId={task_id}", headers=auth(key)).json()["items"]
    return task_id, approvals[0]["id"]


def _govern(client: TestClient, policies: Sequence[Policy]) -> None:
    client.app.state.gateway.governing = lambda workflow: policies if workflow == "gated" else ()  # type: ignore[attr-defined]


def test_a_submitter_may_not_approve_their_own_task(client: TestClient, keys: Keys, sam: str, worker: Worker) -> None:
    _govern(client, [_policy(True)])
    task_id, approval_id = _gated(client, sam)
    problem = assert_problem(
        client.post(f"/v1/approvals/{approval_id}/approve", json={"reason": "mine"}, headers=auth(sam)),
        403,
        "separation-of-duties",
    )
    assert "'sam' submitted this task" in problem["detail"]
    assert problem["taskId"] == task_id
    assert client.get(f"/v1/approvals/{approval_id}", headers=auth(sam)).json()["state"] == "pending"
    # The refusal is on the audit log, with the Policy version whose rule asked for it.
    engine: Engine = client.app.state.gateway.engine  # type: ignore[attr-defined]
    [denial] = [r for r in engine.audit.records() if r.decision == "deny"]
    assert (denial.kind, denial.subject, denial.actor, denial.tenant) == ("policy", f"task/{task_id}", "sam", "acme")
    details = json.loads(denial.details)
    assert (details["reason"], details["approval"], details["policies"]) == (
        "separation-of-duties",
        approval_id,
        ["claims/four-eyes@4"],
    )
    # Another approver of the tenant decides.
    assert client.post(f"/v1/approvals/{approval_id}/approve", headers=auth(keys.bob)).status_code == 200
    assert wait_task(client, sam, task_id, done)["state"] == "succeeded"


def test_the_submitter_may_still_reject(client: TestClient, keys: Keys, sam: str, worker: Worker) -> None:
    _govern(client, [_policy(True)])
    task_id, approval_id = _gated(client, sam)
    response = client.post(f"/v1/approvals/{approval_id}/reject", json={"reason": "withdrawn"}, headers=auth(sam))
    assert response.status_code == 200, response.text
    assert wait_task(client, sam, task_id, done)["state"] == "rejected"


def test_without_such_a_rule_self_approval_is_allowed(client: TestClient, keys: Keys, sam: str, worker: Worker) -> None:
    _govern(client, [_policy(False)])
    task_id, approval_id = _gated(client, sam)
    assert client.post(f"/v1/approvals/{approval_id}/approve", headers=auth(sam)).status_code == 200
    assert wait_task(client, sam, task_id, done)["state"] == "succeeded"


def test_the_rule_comes_from_the_policies_the_gateway_follows(
    client: TestClient, keys: Keys, sam: str, worker: Worker
) -> None:
    labelled = Policy.model_validate(
        {
            "metadata": {"name": "four-eyes", "namespace": "claims"},
            "spec": {
                "selector": {"matchLabels": {"review": "4-eyes"}},
                "approvals": [{"name": "all", "when": "true", "separationOfDuties": True}],
            },
        }
    )
    policies = PolicySet([labelled])
    targets = {"gated": Target("Workflow", "gated", "claims", {"review": "4-eyes"})}
    follow_policies(client.app.state.gateway, policies, targets)  # type: ignore[attr-defined]
    _, approval_id = _gated(client, sam)
    assert_problem(client.post(f"/v1/approvals/{approval_id}/approve", headers=auth(sam)), 403, "separation-of-duties")
    policies.replace([])  # the rule is gone: the next call sees it
    assert client.post(f"/v1/approvals/{approval_id}/approve", headers=auth(sam)).status_code == 200
