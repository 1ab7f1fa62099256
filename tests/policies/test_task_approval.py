"""A task's ``policy.approval`` annotation, through the real engine (and once through the gateway): ``required``
makes a human approve the task before it succeeds, even where no workflow step or Policy rule would ask, and makes
a Policy approval ask a human even where the workflow's own approval step would satisfy it; ``skip-if-allowed``
bypasses nothing, since no Policy allows skipping an approval."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import GatewaySettings, create_api_key, create_app
from crds.policy import Policy
from engine import Engine, NotAuthorizedError, TaskState
from engine.runtime.gate import POLICY_APPROVAL_STEP
from engine.runtime.intake import Accepted, Submission
from policies.effective import Target
from policies.sources import PolicySet
from tests.engine.conftest import fast_worker, wait_done, wait_state

AUTO = {"steps": [{"name": "score", "type": "rules", "rules": {"set": {"amount": "input.amount"}}}]}
REVIEWED = {
    "steps": [
        {"name": "score", "type": "rules", "rules": {"set": {"amount": "input.amount"}}},
        {"name": "review", "type": "approval", "approval": {"approvers": {"roles": ["approver"]}}},
    ]
}
LARGE = Policy.model_validate(
    {
        "metadata": {"name": "large", "namespace": "default", "generation": 1},
        "spec": {
            "selector": {"kinds": ["Workflow"]},
            "approvals": [{"name": "large", "when": "input.amount > 1000", "roles": ["approver"]}],
        },
    }
)


def _engine(url: str, data_dir: Path, *policies: Policy) -> Engine:
    rules = None
    if policies:
        policy_set = PolicySet(list(policies))

        def rules(workflow: str) -> Any:
            return policy_set.effective(Target("Workflow", workflow)).approvals

    engine = Engine(url, data_dir=data_dir, approval_rules=rules)
    engine.register_workflow("auto", AUTO)
    engine.register_workflow("reviewed", REVIEWED)
    return engine


@pytest.fixture
def plain(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    """No Policy has approval rules: the engine has no gate at all."""
    engine = _engine(db_url, tmp_path / "data")
    yield engine
    engine.close()


@pytest.fixture
def ruled(tmp_path: Path) -> Iterator[Engine]:
    engine = _engine(f"sqlite:///{tmp_path / 'engine.db'}", tmp_path / "data", LARGE)
    yield engine
    engine.close()


def submit(engine: Engine, workflow: str, amount: int, approval: str | None = None) -> str:
    annotations = {"approval": approval} if approval is not None else None
    sub = Submission(tenant="acme", workflow=workflow, input={"amount": amount}, annotations=annotations)
    [outcome] = engine.submit_many([sub])
    assert isinstance(outcome, Accepted), outcome
    return outcome.task.id


def pending(engine: Engine, task_id: str) -> list[Any]:
    return list(engine.approvals("acme", task_id=task_id).items)


def audit(engine: Engine, task_id: str) -> list[tuple[str, str]]:
    return [(r.kind, r.decision) for r in engine.audit.records() if task_id in r.subject]


def test_required_asks_a_human_where_nothing_else_would(plain: Engine) -> None:
    engine = plain
    with fast_worker(engine):
        asked = submit(engine, "auto", 5, approval="required")
        sibling = submit(engine, "auto", 5)
        default = submit(engine, "auto", 5, approval="policy")
        assert wait_done(engine, "acme", sibling).state == TaskState.SUCCEEDED
        assert wait_done(engine, "acme", default).state == TaskState.SUCCEEDED
        waiting = wait_state(engine, "acme", asked, TaskState.WAITING)
        assert waiting.current_step == POLICY_APPROVAL_STEP
        [approval] = pending(engine, asked)
        assert (approval.step, approval.roles, approval.quorum) == (POLICY_APPROVAL_STEP, ["approver"], 1)
        assert "policy.approval: required" in approval.prompt
        with pytest.raises(NotAuthorizedError):
            engine.approve(approval.id, "sam", "mine", tenant="acme", roles={"submitter"})
        engine.approve(approval.id, "alice", "looked at it", tenant="acme", roles={"approver"})
        done = wait_done(engine, "acme", asked)
    assert done.state == TaskState.SUCCEEDED
    assert done.vars == {"amount": 5}
    assert audit(engine, asked) == [("approval-rule", "required"), ("approval", "approve")]
    [record] = [r for r in engine.audit.records() if r.kind == "approval-rule"]
    assert json.loads(record.details)["reasons"] == [
        "the submitter asked for a human approval (policy.approval: required)"
    ]
    assert audit(engine, sibling) == []


def test_required_is_met_by_the_workflows_own_approval_step(plain: Engine) -> None:
    engine = plain
    with fast_worker(engine):
        task_id = submit(engine, "reviewed", 5, approval="required")
        wait_state(engine, "acme", task_id, TaskState.WAITING)
        [approval] = pending(engine, task_id)
        assert approval.step == "review"
        engine.approve(approval.id, "alice", "ok", tenant="acme", roles={"approver"})
        assert wait_done(engine, "acme", task_id).state == TaskState.SUCCEEDED  # one human asked, once
    assert [s.name for s in engine.steps("acme", task_id)] == ["score", "review"]


def test_a_rejection_ends_the_task(plain: Engine) -> None:
    engine = plain
    with fast_worker(engine):
        task_id = submit(engine, "auto", 5, approval="required")
        wait_state(engine, "acme", task_id, TaskState.WAITING)
        [approval] = pending(engine, task_id)
        engine.reject(approval.id, "alice", "not this one", tenant="acme", roles={"approver"})
        assert wait_done(engine, "acme", task_id).state == TaskState.REJECTED


def test_required_makes_a_policy_approval_ask_even_where_a_step_would_satisfy_it(ruled: Engine) -> None:
    engine = ruled
    with fast_worker(engine):
        usual = submit(engine, "reviewed", 5000)
        asked = submit(engine, "reviewed", 5000, approval="required")
        for task_id in (usual, asked):
            wait_state(engine, "acme", task_id, TaskState.WAITING)
            [review] = pending(engine, task_id)
            engine.approve(review.id, "alice", "ok", tenant="acme", roles={"approver"})
        # The workflow's review meets the rule for the usual task; the asking one gets the Policy's own approval.
        assert wait_done(engine, "acme", usual).state == TaskState.SUCCEEDED
        wait_state(engine, "acme", asked, TaskState.WAITING)
        [policy_approval] = pending(engine, asked)
        assert policy_approval.step == POLICY_APPROVAL_STEP
        assert "large" in policy_approval.prompt
        engine.approve(policy_approval.id, "bob", "ok too", tenant="acme", roles={"approver"})
        assert wait_done(engine, "acme", asked).state == TaskState.SUCCEEDED
    assert ("approval-rule", "satisfied") in audit(engine, usual)
    assert ("approval-rule", "required") in audit(engine, asked)


def test_skip_if_allowed_bypasses_no_human_gate(ruled: Engine) -> None:
    engine = ruled
    with fast_worker(engine):
        by_rule = submit(engine, "auto", 5000, approval="skip-if-allowed")
        by_step = submit(engine, "reviewed", 5, approval="skip-if-allowed")
        free = submit(engine, "auto", 5, approval="skip-if-allowed")
        assert wait_done(engine, "acme", free).state == TaskState.SUCCEEDED  # as under "policy"
        assert wait_state(engine, "acme", by_rule, TaskState.WAITING).current_step == POLICY_APPROVAL_STEP
        assert wait_state(engine, "acme", by_step, TaskState.WAITING).current_step == "review"


def test_required_through_the_gateway(tmp_path: Path) -> None:
    with _engine(f"sqlite:///{tmp_path / 'engine.db'}", tmp_path / "data") as engine:
        alice = {"Authorization": f"Bearer {create_api_key(engine, 'acme', 'alice', ['submitter'])}"}
        bob = {"Authorization": f"Bearer {create_api_key(engine, 'acme', 'bob', ['approver'])}"}
        body = {"workflow": {"name": "auto"}, "input": {"amount": 5}, "policy": {"approval": "required"}}
        with TestClient(create_app(engine, GatewaySettings())) as client, fast_worker(engine):
            response = client.post("/v1/tasks?mode=sync&wait=1", json=body, headers=alice)
            assert response.status_code == 202, response.text  # waits for a human, not done within the wait
            task_id = response.json()["id"]
            [approval] = client.get("/v1/approvals?state=pending", headers=bob).json()["items"]
            assert approval["taskId"] == task_id
            decided = client.post(f"/v1/approvals/{approval['id']}/approve", json={"reason": "ok"}, headers=bob)
            assert decided.status_code == 200, decided.text
            assert wait_done(engine, "acme", task_id).state == TaskState.SUCCEEDED
