"""``aiplane audit verify --push-to URL``: a scheduled verify (the chart's CronJob) pushes its verdict to a
Pushgateway under one job, where the audit alerts and the Governance dashboard read it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from aiplane.cli import AUDIT_PUSH_JOB, main
from engine.store.audit import AuditLog
from engine.store.database import Database
from engine.store.migrate import upgrade
from engine.store.schema import audit_log
from tests.fixtures.downstream import Downstream, Reply


@pytest.fixture
def gateway() -> Iterator[Downstream]:
    # Records what is pushed; the push itself is prometheus-client's (PUT of the text format under /metrics/job/).
    server = Downstream()
    yield server
    server.close()


def test_the_verdict_is_pushed_under_one_job(
    tmp_path: Path, gateway: Downstream, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    db = Database(url)
    upgrade(db)
    AuditLog(db).append("approval", "task/T1", "approve", {}, tenant="acme", actor="alice")
    path = f"/metrics/job/{AUDIT_PUSH_JOB}"

    assert main(["audit", "verify", "--database", url, "--push-to", gateway.base_url]) == 0
    [pushed] = gateway.calls[path]
    assert pushed.method == "PUT"
    assert "aiplane_policy_audit_verify_status 1.0" in pushed.body
    assert "aiplane_policy_audit_records 1.0" in pushed.body
    assert "aiplane_policy_audit_verify_timestamp_seconds" in pushed.body

    with db.write() as conn:
        conn.execute(sa.update(audit_log).where(audit_log.c.seq == 1).values(actor="mallory"))
    db.dispose()
    assert main(["audit", "verify", "--database", url, "--push-to", gateway.base_url]) == 1
    assert "aiplane_policy_audit_verify_status 0.0" in gateway.calls[path][-1].body
    capsys.readouterr()

    # A Pushgateway that refuses: the verdict still decides the exit code, and the failure is said.
    gateway.script(path, Reply(503))
    assert main(["audit", "verify", "--database", url, "--push-to", gateway.base_url]) == 1
    assert "cannot push the verdict" in capsys.readouterr().err
