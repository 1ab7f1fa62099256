"""Policies' approval rules, enforced by the engine: a task whose rule triggers waits in an approval with the rule's
roles and quorum before it may succeed, with the result it would have had; a rejection or an expiry fails it."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from crds.policy import Policy
from engine import ApprovalState, Engine, NotAuthorizedError, TaskState
from engine.runtime.gate import POLICY_APPROVAL_STEP, ApprovalGate
from policies.effective import Target
from policies.sources import PolicySet
from tests.engine.conftest import EngineFactory, connector_step, fast_worker, wait_done, wait_state

CLAIMS = Target("Workflow", "claims", "default", {"team": "claims"})


def policy(name: str, *rules: dict[str, Any], labels: dict[str, str] | None = None) -> Policy:
    return Policy.model_validate(
        {
            "metadata": {"name": name, "namespace": "default", "generation": 3},
            "spec": {
                "selector": {"kinds": ["Workflow"], "matchLabels": labels or {"team": "claims"}},
                "approvals": list(rules),
            },
        }
    )


def gate_of(*policies: Policy) -> ApprovalGate:
    policy_set = PolicySet(policies)
    targets = {"claims": CLAIMS}

    def rules_for(workflow: str) -> Any:
        return policy_set.effective(targets.get(workflow) or Target("Workflow", workflow)).approvals

    return ApprovalGate(rules_for)


# The connector echoes its input: the result is {"path": "/c/score", "received": {"amount": ..., "confidence": ...}}.
CLAIMS_SPEC = {
    "steps": [
        connector_step(
            "score",
            connector={
                "name": "c",
                "input": {"step": "'score'", "amount": "input.amount", "confidence": "input.confidence"},
            },
        )
    ]
}
LARGE = {
    "name": "large-claims",
    "when": "input.amount > 10000 || result.received.confidence < 0.8",
    "roles": ["approver", "admin"],
    "quorum": 2,
}


@pytest.fixture
def gated(make_engine: EngineFactory, db_url: str) -> Engine:
    engine = make_engine(db_url, approval_rules=gate_of(policy("large-claims", LARGE)).rules_for)
    engine.register_workflow("claims", CLAIMS_SPEC)
    engine.register_workflow("other", CLAIMS_SPEC)
    return engine


def audit_kinds(engine: Engine, task_id: str) -> list[tuple[str, str]]:
    return [(r.kind, r.decision) for r in engine.audit.records() if task_id in r.subject]


def test_triggered_rule_waits_for_quorum_and_approval_completes_with_the_result(gated: Engine) -> None:
    engine = gated
    with fast_worker(engine):
        task = engine.submit("acme", "claims", {"amount": 25000, "confidence": 0.95})
        waiting = wait_state(engine, "acme", task.id, TaskState.WAITING)
        assert waiting.current_step == POLICY_APPROVAL_STEP
        [approval] = engine.approvals("acme").items
        assert (approval.task_id, approval.step, approval.quorum) == (task.id, POLICY_APPROVAL_STEP, 2)
        assert set(approval.roles) == {"approver", "admin"}
        assert "large-claims" in approval.prompt
        with pytest.raises(NotAuthorizedError):
            engine.approve(approval.id, "eve", "ok", tenant="acme", roles={"submitter"})
        first = engine.approve(approval.id, "alice", "checked", tenant="acme", roles={"approver"})
        assert first.state == ApprovalState.PENDING  # one of two
        assert engine.get("acme", task.id).state == TaskState.WAITING
        engine.approve(approval.id, "bob", "checked too", tenant="acme", roles={"admin"})
        done = wait_done(engine, "acme", task.id)

    assert done.state == TaskState.SUCCEEDED
    assert done.result == {"path": "/c/score", "received": {"step": "score", "amount": 25000, "confidence": 0.95}}
    assert [(s.name, s.state) for s in engine.steps("acme", task.id)] == [
        ("score", "succeeded"),
        (POLICY_APPROVAL_STEP, "succeeded"),
    ]
    types = [e.type for e in engine.events(task.id)]
    assert types.index("approval.requested") < types.index("task.completed")
    assert audit_kinds(engine, task.id) == [
        ("approval-rule", "required"),
        ("approval", "approve"),
        ("approval", "approve"),
    ]
    [required] = [r for r in engine.audit.records() if r.kind == "approval-rule"]
    assert json.loads(required.details)["policies"] == ["default/large-claims@3"]
    lineage = engine.lineage("acme", task.id)
    assert lineage["policies"] == ["default/large-claims@3"]
    assert lineage["steps"][1]["decision"] == {"decision": "approved", "approvers": ["alice", "bob"]}
    assert engine.audit.verify().ok


def test_rule_over_the_result_triggers_and_reject_fails_the_task(gated: Engine) -> None:
    engine = gated
    with fast_worker(engine):
        task = engine.submit("acme", "claims", {"amount": 10, "confidence": 0.5})
        wait_state(engine, "acme", task.id, TaskState.WAITING)
        [approval] = engine.approvals("acme").items
        engine.reject(approval.id, "alice", "confidence too low", tenant="acme", roles={"approver"})
        done = wait_done(engine, "acme", task.id)
    assert done.state == TaskState.REJECTED
    assert done.error is not None
    assert (done.error["kind"], done.error["message"], done.error["step"]) == (
        "Rejected",
        "confidence too low",
        POLICY_APPROVAL_STEP,
    )
    assert done.result is None  # held only for the approvers
    assert audit_kinds(engine, task.id) == [("approval-rule", "required"), ("approval", "reject")]


def test_rule_that_does_not_trigger_completes_directly(gated: Engine) -> None:
    engine = gated
    with fast_worker(engine):
        small = engine.submit("acme", "claims", {"amount": 10, "confidence": 0.99})
        ungoverned = engine.submit("acme", "other", {"amount": 99999, "confidence": 0.1})
        assert wait_done(engine, "acme", small.id).state == TaskState.SUCCEEDED
        assert wait_done(engine, "acme", ungoverned.id).state == TaskState.SUCCEEDED
    assert engine.approvals("acme").items == []
    assert audit_kinds(engine, small.id) == []


def test_unsatisfiable_requirement_refuses_the_task(make_engine: EngineFactory, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    engine.machine.gate = gate_of(
        policy("a", {"name": "a", "when": "input.amount > 1", "roles": ["admin"]}),
        policy("b", {"name": "b", "when": "true", "roles": ["auditor"]}),
    )
    engine.register_workflow("claims", CLAIMS_SPEC)
    with fast_worker(engine):
        task = engine.submit("acme", "claims", {"amount": 5, "confidence": 1})
        done = wait_done(engine, "acme", task.id)
    assert done.state == TaskState.FAILED
    assert done.error is not None
    assert done.error["kind"] == "ApprovalUnsatisfiable"
    assert audit_kinds(engine, task.id) == [("approval-rule", "unsatisfiable")]


def test_rule_that_cannot_be_evaluated_fails_closed(make_engine: EngineFactory, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    engine.machine.gate = gate_of(policy("p", {"name": "typo", "when": "input.amont > 1"}))
    engine.register_workflow("claims", CLAIMS_SPEC)
    with fast_worker(engine):
        task = engine.submit("acme", "claims", {"amount": 5, "confidence": 1})
        wait_state(engine, "acme", task.id, TaskState.WAITING)
    [approval] = engine.approvals("acme").items
    assert "could not be evaluated" in approval.prompt


def test_expired_policy_approval_fails_the_task(make_engine: EngineFactory, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    engine.machine.gate = gate_of(policy("p", {"name": "all", "when": "true"}))
    engine.machine.gate.expiry = timedelta(milliseconds=200)
    engine.register_workflow("claims", CLAIMS_SPEC)
    with fast_worker(engine):
        task = engine.submit("acme", "claims", {"amount": 5, "confidence": 1})
        done = wait_done(engine, "acme", task.id)
    assert done.state == TaskState.FAILED
    assert done.error is not None
    assert done.error["kind"] == "ApprovalExpired"
    assert done.result is None
    assert engine.approvals("acme", state=ApprovalState.EXPIRED).items[0].step == POLICY_APPROVAL_STEP
    assert audit_kinds(engine, task.id) == [("approval-rule", "required"), ("approval", "expire")]


def test_rule_over_steps_and_after_a_human_approval_step(make_engine: EngineFactory, sqlite_url: str) -> None:
    """The gate also stands where a workflow's own approval step ends the task, and reads step outputs."""
    engine = make_engine(sqlite_url)
    # Only admins may meet the rule: the review step (approvers) does not.
    engine.machine.gate = gate_of(
        policy("p", {"name": "big", "when": "steps.score.output.received.amount > 100", "roles": ["admin"]})
    )
    engine.register_workflow(
        "claims",
        {
            "steps": [
                *CLAIMS_SPEC["steps"],
                {"name": "review", "type": "approval", "approval": {"prompt": "ok?"}},
            ]
        },
    )
    with fast_worker(engine):
        task = engine.submit("acme", "claims", {"amount": 500, "confidence": 1})
        wait_state(engine, "acme", task.id, TaskState.WAITING)
        [review] = engine.approvals("acme").items
        assert review.step == "review"
        engine.approve(review.id, "alice", "fine")
        wait_state(engine, "acme", task.id, TaskState.WAITING)
        [policy_approval] = engine.approvals("acme", state=ApprovalState.PENDING).items
        assert policy_approval.step == POLICY_APPROVAL_STEP
        engine.approve(policy_approval.id, "bob", "fine")
        done = wait_done(engine, "acme", task.id)
    assert done.state == TaskState.SUCCEEDED
    assert done.result is not None
    assert done.result["decision"] == "approved"


def test_the_workflows_own_approval_meets_the_rule(make_engine: EngineFactory, sqlite_url: str) -> None:
    """An approval step approved by enough people holding roles the rule accepts already meets it: nobody is asked
    twice, and the audit log says which step met it. One the rule does not accept (a lower quorum) does not."""
    engine = make_engine(sqlite_url)
    engine.machine.gate = gate_of(
        policy("p", {"name": "big", "when": "steps.score.output.received.amount > 100", "roles": ["approver", "admin"]})
    )
    review = {"name": "review", "type": "approval", "approval": {"approvers": {"roles": ["approver"]}}}
    engine.register_workflow("claims", {"steps": [*CLAIMS_SPEC["steps"], review]})
    with fast_worker(engine):
        task = engine.submit("acme", "claims", {"amount": 500, "confidence": 1})
        wait_state(engine, "acme", task.id, TaskState.WAITING)
        [approval] = engine.approvals("acme").items
        engine.approve(approval.id, "alice", "fine", tenant="acme", roles={"approver"})
        done = wait_done(engine, "acme", task.id)
    assert done.state == TaskState.SUCCEEDED
    assert [s.name for s in engine.steps("acme", task.id)] == ["score", "review"]
    [met] = [r for r in engine.audit.records() if r.kind == "approval-rule"]
    assert met.decision == "satisfied"
    assert json.loads(met.details)["satisfiedBy"] == "review"
