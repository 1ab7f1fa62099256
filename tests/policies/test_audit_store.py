"""The audit log in the engine's database (SQLite and PostgreSQL): appends make one chain even when concurrent,
and tampering with rows directly in the database (update, delete, insert, reorder) is detected and located."""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from engine.store.audit import AuditLog
from engine.store.database import Database
from engine.store.schema import audit_head, audit_log
from policies.audit import Record, verify


def filled(db: Database, n: int = 5) -> AuditLog:
    log = AuditLog(db)
    for i in range(n):
        log.append("policy", f"task/T{i}", "allow", {"policy": "p", "i": i, "score": 0.75}, tenant="acme", actor="k")
    return log


def problems(log: AuditLog) -> list[str]:
    return [str(p) for p in log.verify().problems]


def test_appends_chain_and_verify(db: Database) -> None:
    log = AuditLog(db)
    assert log.verify().ok
    assert log.verify().records == 0
    first = log.append("approval", "task/T1/approval/A1", "approve", {"quorum": 2}, tenant="acme", actor="alice")
    second = log.append("model", "default/claims", "rollback", {"reason": "error rate"})
    assert (first.seq, second.seq) == (1, 2)
    assert second.prev_hash == first.hash
    result = log.verify()
    assert result.ok, result.problems
    assert result.records == 2
    assert log.head() == result.last
    assert log.records() == [first, second]


def test_concurrent_appends_make_one_chain(db: Database) -> None:
    log = AuditLog(db)
    errors: list[BaseException] = []

    def appender(worker: int) -> None:
        try:
            for i in range(15):
                log.append("access", f"worker/{worker}", "allow", {"i": i})
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=appender, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    result = log.verify()
    assert result.ok, result.problems
    assert result.records == 90
    assert [r.seq for r in log.records(limit=1000)] == list(range(1, 91))


def test_an_updated_row_is_detected(db: Database) -> None:
    log = filled(db)
    with db.write() as conn:
        conn.execute(sa.update(audit_log).where(audit_log.c.seq == 3).values(decision="deny"))
    assert problems(log) == ["record 3: edited: its fields do not match its hash"]


def test_an_updated_row_with_a_recomputed_hash_is_detected(db: Database) -> None:
    log = filled(db)
    forged = Record(**{**log.records()[2].__dict__, "details": '{"policy":"forged"}'})
    with db.write() as conn:
        conn.execute(
            sa.update(audit_log).where(audit_log.c.seq == 3).values(details=forged.details, hash=forged.computed_hash())
        )
    assert problems(log) == ["record 4: does not follow record 3: a record before it was deleted, inserted or replaced"]


def test_a_deleted_row_is_detected(db: Database) -> None:
    log = filled(db)
    with db.write() as conn:
        conn.execute(sa.delete(audit_log).where(audit_log.c.seq == 2))
    found = problems(log)
    assert found[0] == "record 3: records 2 are missing (deleted)"
    assert len(found) == 2


def test_deleting_the_newest_rows_is_detected(db: Database) -> None:
    log = filled(db)
    with db.write() as conn:
        conn.execute(sa.delete(audit_log).where(audit_log.c.seq >= 4))
    assert problems(log) == ["record 5: the log ends at record 3 but its head is at 5: deleted"]
    with db.write() as conn:
        conn.execute(sa.delete(audit_log))
        conn.execute(sa.delete(audit_head))
    assert log.verify().ok  # nothing left to compare with: see docs/policies.md on anchoring the head


def test_reordered_rows_are_detected(db: Database) -> None:
    log = filled(db)
    with db.write() as conn:
        # Swap the positions of records 2 and 4 (through a free seq, the primary key).
        conn.execute(sa.update(audit_log).where(audit_log.c.seq == 2).values(seq=-1))
        conn.execute(sa.update(audit_log).where(audit_log.c.seq == 4).values(seq=2))
        conn.execute(sa.update(audit_log).where(audit_log.c.seq == -1).values(seq=4))
    found = log.verify().problems
    assert {p.seq for p in found} == {2, 3, 4, 5}
    assert sum("edited" in p.what for p in found) == 2


def test_an_inserted_row_is_detected(db: Database) -> None:
    log = filled(db, 3)
    with db.write() as conn:
        row = conn.execute(sa.select(audit_log).where(audit_log.c.seq == 3)).one()._asdict()
        conn.execute(sa.insert(audit_log).values({**row, "seq": 4, "id": "01INSERTED0000000000000000"}))
    assert problems(log) == [
        "record 4: edited: its fields do not match its hash",
        "record 4: does not follow record 3: a record before it was deleted, inserted or replaced",
        "record 4: the head is at record 3: records after it were inserted",
    ]


def test_export_writes_verifiable_json_lines(db: Database) -> None:
    log = filled(db, 4)
    out = io.StringIO()
    assert log.export(out) == 4
    lines = out.getvalue().splitlines()
    exported = [Record.from_json(json.loads(line)) for line in lines]
    assert exported == log.records()
    assert verify(exported, log.head()).ok
    assert json.loads(lines[0])["details"] == {"i": 0, "policy": "p", "score": 0.75}
    tail = io.StringIO()
    assert log.export(tail, after_seq=2) == 2


def test_a_retention_purge_keeps_the_rest_verifiable(db: Database) -> None:
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    log = AuditLog(db, clock=lambda: clock[0])
    for i in range(6):
        clock[0] += timedelta(days=1)
        log.append("policy", f"task/T{i}", "allow", {"i": i})
    anchor = log.head()
    assert anchor is not None
    clock[0] += timedelta(days=1)
    assert log.prune(before=datetime(2026, 1, 4, 12, tzinfo=UTC)) == 3
    assert log.prune(before=datetime(2026, 1, 1, tzinfo=UTC)) == 0
    remaining = log.records()
    assert [r.seq for r in remaining] == [4, 5, 6, 7]
    prune = remaining[-1]
    assert (prune.kind, prune.decision) == ("audit", "prune")
    assert json.loads(prune.details)["throughSeq"] == 3
    result = log.verify(anchors=[anchor])
    assert result.ok, result.problems
    assert result.records == 4

    # Deleting more of the oldest records by hand, and moving the base to hide it, is still caught.
    with db.write() as conn:
        conn.execute(sa.delete(audit_log).where(audit_log.c.seq == 4))
        conn.execute(sa.update(audit_head).where(audit_head.c.id == 2).values(seq=4, hash=remaining[0].hash))
    assert problems(log) == ["record 4: records up to here were removed, but no prune record in the log says so"]
