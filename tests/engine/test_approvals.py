"""Approval steps park the task without holding a worker; decisions and expiry move it on."""

from __future__ import annotations

from typing import Any

import pytest

from engine import ApprovalState, Engine, InvalidStateError, NotAuthorizedError, TaskState
from tests.engine.conftest import Downstream, EngineFactory, connector_step, fast_worker, wait_done, wait_state


def gated(**approval: Any) -> dict[str, Any]:
    return {
        "steps": [
            connector_step("before"),
            {"name": "gate", "type": "approval", "approval": {"prompt": "Pay out?", **approval}},
            connector_step("after", end=True),
            connector_step("escalate", end=True),
            connector_step("fallback", end=True),
        ]
    }


def test_approval_holds_no_worker_and_approve_continues(engine: Engine, downstream: Downstream) -> None:
    engine.register_workflow("gated", gated())
    engine.register_workflow("plain", {"steps": [connector_step("plain")]})
    # One worker slot: if a waiting approval held it, the second task could never run.
    with fast_worker(engine, concurrency=1):
        task = engine.submit("acme", "gated", {"claim": 7})
        wait_state(engine, "acme", task.id, TaskState.WAITING)
        other = engine.submit("acme", "plain", {})
        assert wait_done(engine, "acme", other.id).state == TaskState.SUCCEEDED

        [approval] = engine.approvals("acme").items
        assert (approval.task_id, approval.step, approval.prompt) == (task.id, "gate", "Pay out?")
        assert engine.approvals("globex").items == []
        decided = engine.approve(approval.id, "alice", "looks fine", tenant="acme", roles={"approver"})
        assert decided.state == ApprovalState.APPROVED
        done = wait_done(engine, "acme", task.id)

    assert done.state == TaskState.SUCCEEDED
    assert (downstream.count("/c/before"), downstream.count("/c/after"), downstream.count("/c/fallback")) == (1, 1, 0)
    types = [e.type for e in engine.events(task.id)]
    assert "approval.requested" in types
    assert "approval.decided" in types
    gate = next(s for s in engine.steps("acme", task.id) if s.name == "gate")
    assert gate.attempts == 0  # no worker ever claimed it
    assert gate.output["decision"] == "approved"


def test_reject_ends_the_task_with_the_reason(
    make_engine: EngineFactory, sqlite_url: str, downstream: Downstream
) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow("gated", gated())
    with fast_worker(engine):
        task = engine.submit("acme", "gated", {})
        wait_state(engine, "acme", task.id, TaskState.WAITING)
        [approval] = engine.approvals("acme").items
        engine.reject(approval.id, "bob", "amount too high")
        done = wait_done(engine, "acme", task.id)
    assert done.state == TaskState.REJECTED
    assert done.error is not None
    assert (done.error["kind"], done.error["message"], done.error["approver"]) == ("Rejected", "amount too high", "bob")
    assert downstream.count("/c/after") == 0


def test_reject_goes_to_on_reject(make_engine: EngineFactory, sqlite_url: str, downstream: Downstream) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow("gated", gated(onReject="fallback"))
    with fast_worker(engine):
        task = engine.submit("acme", "gated", {})
        wait_state(engine, "acme", task.id, TaskState.WAITING)
        engine.reject(engine.approvals("acme").items[0].id, "bob", "no")
        done = wait_done(engine, "acme", task.id)
    assert done.state == TaskState.SUCCEEDED
    assert (downstream.count("/c/fallback"), downstream.count("/c/after")) == (1, 0)


def test_expiry_escalates_to_on_expire(engine: Engine, downstream: Downstream) -> None:
    engine.register_workflow("gated", gated(expiry="200ms", onExpire="escalate"))
    with fast_worker(engine):
        task = engine.submit("acme", "gated", {})
        done = wait_done(engine, "acme", task.id)
    assert done.state == TaskState.SUCCEEDED
    assert (downstream.count("/c/escalate"), downstream.count("/c/after")) == (1, 0)
    [approval] = engine.approvals("acme", state=None).items
    assert approval.state == ApprovalState.EXPIRED
    assert "approval.expired" in [e.type for e in engine.events(task.id)]
    with pytest.raises(InvalidStateError, match="already expired"):
        engine.approve(approval.id, "alice")


def test_expiry_without_on_expire_fails_the_task(make_engine: EngineFactory, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow("gated", gated(expiry="100ms"))
    with fast_worker(engine):
        done = wait_done(engine, "acme", engine.submit("acme", "gated", {}).id)
    assert done.state == TaskState.FAILED
    assert done.error is not None
    assert done.error["kind"] == "ApprovalExpired"


def test_quorum_and_approvers(make_engine: EngineFactory, sqlite_url: str, downstream: Downstream) -> None:
    engine = make_engine(sqlite_url)
    engine.register_workflow("gated", gated(quorum=2, approvers={"roles": ["admin"], "users": ["carol"]}))
    with fast_worker(engine):
        task = engine.submit("acme", "gated", {})
        wait_state(engine, "acme", task.id, TaskState.WAITING)
        [approval] = engine.approvals("acme").items
        with pytest.raises(NotAuthorizedError):
            engine.approve(approval.id, "mallory", roles={"approver"})
        assert engine.approve(approval.id, "alice", roles={"admin"}).state == ApprovalState.PENDING
        with pytest.raises(InvalidStateError, match="already decided"):
            engine.approve(approval.id, "alice", roles={"admin"})
        assert engine.get("acme", task.id).state == TaskState.WAITING
        final = engine.approve(approval.id, "carol", roles=set())
        assert final.state == ApprovalState.APPROVED
        assert [d.approver for d in final.decisions] == ["alice", "carol"]
        assert wait_done(engine, "acme", task.id).state == TaskState.SUCCEEDED
    assert downstream.count("/c/after") == 1
