"""Rollout decisions the Model operator announces (promotion, rollback, abort) land in the audit log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.store.audit import AuditLog
from engine.store.database import Database
from engine.store.migrate import upgrade
from operators.model.rollout import Event
from operators.policy.decisions import recording

MODEL = {"apiVersion": "aiplane.io/v1alpha1", "kind": "Model", "metadata": {"namespace": "claims", "name": "x",
                                                                              "generation": 4}}  # fmt: skip


def test_rollout_decisions_are_recorded_and_other_events_are_not(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'engine.db'}")
    upgrade(db)
    log = AuditLog(db)
    posted: list[tuple[dict[str, Any], Event]] = []
    post = recording(lambda body, event: posted.append((body, event)), log.append)

    post(MODEL, Event("Normal", "RolloutStep", "at 20%"))
    post(MODEL, Event("Warning", "RolloutRolledBack", "error rate 0.3 > 0.05: rolled back to 1.0.0"))
    post(MODEL, Event("Normal", "RolloutPromoted", "1.1.0 is stable"))

    assert [event.reason for _, event in posted] == ["RolloutStep", "RolloutRolledBack", "RolloutPromoted"]
    records = log.records()
    assert [(r.kind, r.subject, r.decision) for r in records] == [
        ("model", "claims/x", "rollback"),
        ("model", "claims/x", "promote"),
    ]
    assert json.loads(records[0].details) == {
        "generation": 4,
        "message": "error rate 0.3 > 0.05: rolled back to 1.0.0",
        "reason": "RolloutRolledBack",
    }
    assert log.verify().ok
    db.dispose()


def test_a_failing_recorder_does_not_fail_the_rollout() -> None:
    posted: list[Event] = []

    def broken(*_: Any) -> None:
        raise RuntimeError("database down")

    post = recording(lambda _, event: posted.append(event), broken)
    post(MODEL, Event("Warning", "RolloutRolledBack", "rolled back"))
    assert [e.reason for e in posted] == ["RolloutRolledBack"]
