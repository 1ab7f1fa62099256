"""``aiplane audit verify`` and ``aiplane audit export`` against a dev data dir's SQLite database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from aiplane.cli import main
from engine.store.audit import AuditLog
from engine.store.database import Database
from engine.store.migrate import upgrade
from engine.store.schema import audit_log


def test_verify_and_export_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = Database(f"sqlite:///{tmp_path / 'engine.db'}")
    upgrade(db)
    log = AuditLog(db)
    for i in range(3):
        log.append("approval", f"task/T{i}", "approve", {"i": i}, tenant="acme", actor="alice")

    assert main(["audit", "verify", "--data-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "audit log intact: 3 records; head 3:" in printed
    anchor = printed.split("head ")[1].strip()

    out = tmp_path / "audit.jsonl"
    assert main(["audit", "export", "--data-dir", str(tmp_path), "-o", str(out)]) == 0
    assert [json.loads(line)["subject"] for line in out.read_text().splitlines()] == ["task/T0", "task/T1", "task/T2"]
    assert main(["audit", "verify", "--file", str(out), "--anchor", anchor]) == 0
    assert "audit log intact: 3 records" in capsys.readouterr().out

    with db.write() as conn:
        conn.execute(sa.update(audit_log).where(audit_log.c.seq == 2).values(actor="mallory"))
    db.dispose()
    metrics = tmp_path / "audit.prom"
    assert (
        main(["audit", "verify", "--database", f"sqlite:///{tmp_path / 'engine.db'}", "--metrics-file", str(metrics)])
        == 1
    )
    assert "aiplane_policy_audit_verify_status 0.0" in metrics.read_text()
    assert "aiplane_policy_audit_problems 1.0" in metrics.read_text()
    printed = capsys.readouterr().out
    assert "TAMPERED record 2: edited" in printed
    assert "1 problem(s)" in printed

    # An export edited by hand, and one cut short (only the anchor can tell).
    lines = out.read_text().splitlines()
    edited = json.loads(lines[0]) | {"decision": "reject"}
    (tmp_path / "edited.jsonl").write_text("\n".join([json.dumps(edited), *lines[1:]]) + "\n")
    assert main(["audit", "verify", "--file", str(tmp_path / "edited.jsonl")]) == 1
    assert "TAMPERED record 1: edited" in capsys.readouterr().out
    (tmp_path / "short.jsonl").write_text("\n".join(lines[:2]) + "\n")
    assert main(["audit", "verify", "--file", str(tmp_path / "short.jsonl")]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", "--file", str(tmp_path / "short.jsonl"), "--anchor", anchor]) == 1
    assert "TAMPERED record 3: the anchored record is missing" in capsys.readouterr().out
    assert main(["audit", "verify", "--anchor", "3:nothex"]) == 2
    assert "an anchor is SEQ:HASH" in capsys.readouterr().err


def test_verify_says_when_there_is_no_audit_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", "--data-dir", str(tmp_path)]) == 2
    assert "cannot read the audit log" in capsys.readouterr().err


def test_an_export_of_a_pruned_log_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = Database(f"sqlite:///{tmp_path / 'engine.db'}")
    upgrade(db)
    log = AuditLog(db)
    for i in range(4):
        log.append("policy", f"task/T{i}", "allow", {"i": i})
    cutoff = log.records()[1].at + (log.records()[2].at - log.records()[1].at) / 2
    assert log.prune(before=cutoff) == 2
    out = tmp_path / "audit.jsonl"
    assert main(["audit", "export", "--data-dir", str(tmp_path), "-o", str(out)]) == 0
    db.dispose()
    assert main(["audit", "verify", "--file", str(out)]) == 0
    assert "audit log intact: 3 records" in capsys.readouterr().out
    lines = out.read_text().splitlines()
    (tmp_path / "cut.jsonl").write_text("\n".join(lines[1:]) + "\n")  # the first kept record removed too
    assert main(["audit", "verify", "--file", str(tmp_path / "cut.jsonl")]) == 1
    assert "no prune record in the log says so" in capsys.readouterr().out
