"""Approval decisions are written to the audit log in the transaction that records them, on both stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import ApprovalState, Engine, InvalidStateError, TaskState
from engine.runtime.intake import Accepted, Submission
from tests.fixtures.polling import assert_eventually

GATED = {
    "steps": [
        {"name": "gate", "type": "approval", "approval": {"prompt": "Pay out?", "quorum": 2}, "end": True},
    ]
}


def test_each_approval_decision_is_an_audit_record(db_url: str, tmp_path: Path) -> None:
    engine = Engine(db_url, data_dir=tmp_path / "data")
    try:
        engine.register_workflow("gated", GATED)
        [accepted] = engine.submit_many(
            [Submission(tenant="acme", workflow="gated", input={"amount": 12000}, submitted_by="sam")]
        )
        assert isinstance(accepted, Accepted)
        task = accepted.task
        with engine.worker(poll_interval=0.02):
            approval = assert_eventually(lambda: engine.approvals("acme").items[0], timeout=20, interval=0.02)
            engine.approve(approval.id, "alice", "ok", tenant="acme", roles={"approver"})
            with pytest.raises(InvalidStateError):
                engine.approve(approval.id, "alice", "again", tenant="acme", roles={"approver"})
            decided = engine.approve(approval.id, "bob", "fine", tenant="acme", roles={"approver"})
            assert decided.state == ApprovalState.APPROVED
            assert engine.wait("acme", task.id, 20).state == TaskState.SUCCEEDED

        log = engine.audit
        records = log.records()
        # The refused second decision by alice rolled back with its transaction: no record of it.
        assert [(r.kind, r.decision, r.actor, r.tenant) for r in records] == [
            ("approval", "approve", "alice", "acme"),
            ("approval", "approve", "bob", "acme"),
        ]
        assert records[0].subject == f"task/{task.id}/approval/{approval.id}"
        details = json.loads(records[1].details)
        assert details["state"] == "approved"
        assert (details["approvals"], details["quorum"], details["step"]) == (2, 2, "gate")
        assert details["submittedBy"] == "sam"
        assert log.verify().ok
    finally:
        engine.close()
