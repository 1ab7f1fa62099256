"""The audit log's storage: records appended to one hash chain in the engine's database, read back to verify.

``policies.audit`` defines records and their hashes; this module keeps them. Appends serialise on the chain head
row: PostgreSQL locks it (``SELECT ... FOR UPDATE``) until the appending transaction ends, SQLite's write
transactions are serial already (``BEGIN IMMEDIATE``). So concurrent appenders, in any number of processes, make
one chain, and an append inside another write transaction (an approval decision) commits or rolls back with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import IO, Any

import sqlalchemy as sa

from engine.clock import Clock, new_id, utcnow
from engine.store.database import Database, dialect_insert
from engine.store.prepared import Prepared
from engine.store.schema import audit_head, audit_log
from policies.audit import GENESIS, Entry, Head, Record, Verification, canonical_json, prune_entry, seal, verify

_HEAD_ID = 1
# A second row of the head table: the last record a retention purge deleted, where the remaining chain starts.
_BASE_ID = 2
# Prepared: appends run on per-task and per-step paths (masking records, approval decisions), where building and
# executing through SQLAlchemy cost several times what the statements do (engine.store.prepared).
_INSERT = Prepared(sa.insert(audit_log))
_LOCK_HEAD = Prepared(
    sa.select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == _HEAD_ID).with_for_update()
)
_MOVE_HEAD = Prepared(sa.update(audit_head).where(audit_head.c.id == _HEAD_ID))


def _lock_head(conn: sa.Connection, now: datetime) -> Head:
    row = _LOCK_HEAD.execute(conn, {}).fetchone()
    if row is None:
        # The first append ever makes the head row; a concurrent first append's insert does nothing, and both then
        # queue on the row's lock.
        conn.execute(
            dialect_insert(conn, audit_head)
            .values(id=_HEAD_ID, seq=0, hash=GENESIS, updated_at=now)
            .on_conflict_do_nothing(index_elements=["id"])
        )
        row = _LOCK_HEAD.execute(conn, {}).fetchone()
    return Head(int(row[0]), str(row[1]))


def append(conn: sa.Connection, entry: Entry, *, now: datetime) -> Record:
    """Append ``entry`` inside the caller's write transaction (the chain head stays locked until it ends)."""
    return append_many(conn, [entry], now=now)[0]


def append_many(conn: sa.Connection, entries: Sequence[Entry], *, now: datetime) -> list[Record]:
    """``append`` for several entries at once: one head lock, one INSERT and one head update for all of them (the
    masking records of an intake batch)."""
    if not entries:
        return []
    head = _lock_head(conn, now)
    records = []
    for entry in entries:
        record = seal(entry, after=head if head.seq else None, record_id=new_id(), at=now)
        records.append(record)
        head = Head(record.seq, record.hash)
    _INSERT.executemany(conn, [_row(record) for record in records])
    last = records[-1]
    _MOVE_HEAD.execute(conn, {"seq": last.seq, "hash": last.hash, "updated_at": now})
    return records


def append_approval(
    conn: sa.Connection,
    task: sa.Row[Any],
    approval: sa.Row[Any],
    *,
    approver: str,
    decision: str,
    reason: str,
    state: str,
    approvals: int,
    now: datetime,
) -> Record:
    """The audit record of one approver's decision (engine.runtime.transitions.decide)."""
    details = {
        "task": task.id,
        "workflow": task.workflow,
        "workflowVersion": task.workflow_version,
        "submittedBy": task.submitted_by,
        "step": approval.step,
        "roles": list(approval.roles),
        "reason": reason,
        "state": str(state),
        "approvals": approvals,
        "quorum": approval.quorum,
    }
    subject = f"task/{task.id}/approval/{approval.id}"
    return append(conn, Entry("approval", subject, decision, details, tenant=task.tenant, actor=approver), now=now)


def _row(record: Record) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "id": record.id,
        "at": record.at,
        "kind": record.kind,
        "subject": record.subject,
        "decision": record.decision,
        "tenant": record.tenant,
        "actor": record.actor,
        "details": record.details,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }


def _record(row: sa.Row[Any]) -> Record:
    return Record(
        seq=row.seq,
        id=row.id,
        at=row.at,
        kind=row.kind,
        subject=row.subject,
        decision=row.decision,
        tenant=row.tenant,
        actor=row.actor,
        details=row.details,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


class AuditLog:
    """The audit log of one database: ``append`` a decision, read, ``verify`` or ``export`` the chain."""

    def __init__(self, db: Database, *, clock: Clock = utcnow) -> None:
        self.db = db
        self.clock = clock

    def append(
        self,
        kind: str,
        subject: str,
        decision: str,
        details: Mapping[str, Any] | None = None,
        *,
        tenant: str | None = None,
        actor: str | None = None,
    ) -> Record:
        """Record one decision in its own transaction; raises ``policies.audit.AuditEntryError`` on bad input."""
        entry = Entry(kind, subject, decision, dict(details or {}), tenant=tenant, actor=actor)
        with self.db.write() as conn:
            return append(conn, entry, now=self.clock())

    def append_many(self, entries: Sequence[Entry]) -> list[Record]:
        """Record several decisions in one transaction (one lock of the chain head), in order."""
        if not entries:
            return []
        with self.db.write() as conn:
            return append_many(conn, entries, now=self.clock())

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sa.Connection]:
        # One snapshot for the head and the records, so appends made while an export or a verification reads
        # neither show up half-way nor look like tampering. SQLite's read transactions are snapshots already.
        with self.db.engine.connect() as plain:
            conn = plain if self.db.is_sqlite else plain.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    @staticmethod
    def _head(conn: sa.Connection, row_id: int = _HEAD_ID) -> Head | None:
        row = conn.execute(sa.select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == row_id)).first()
        return None if row is None else Head(row.seq, row.hash)

    @staticmethod
    def _records(conn: sa.Connection, *, after_seq: int = 0) -> Iterator[Record]:
        rows = conn.execution_options(yield_per=1000).execute(
            sa.select(audit_log).where(audit_log.c.seq > after_seq).order_by(audit_log.c.seq)
        )
        for row in rows:
            yield _record(row)

    def head(self) -> Head | None:
        with self.db.read() as conn:
            return self._head(conn)

    def records(self, *, after_seq: int = 0, limit: int = 1000) -> list[Record]:
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(audit_log).where(audit_log.c.seq > after_seq).order_by(audit_log.c.seq).limit(limit)
            )
            return [_record(row) for row in rows]

    def verify(self, *, anchors: Iterable[Head] = ()) -> Verification:
        """Check the whole chain against its head and ``anchors`` (see ``policies.audit`` for what is detected)."""
        with self._snapshot() as conn:
            head, base = self._head(conn), self._head(conn, _BASE_ID)
            return verify(self._records(conn), head, base=base, anchors=anchors)

    def prune(self, *, before: datetime, reason: str = "retention") -> int:
        """Delete the records written before ``before`` (retention), keeping what remains verifiable.

        The last deleted record becomes the chain's base (where verification starts), and a prune record naming
        it is appended in the same transaction, so the deletion is itself on the record. Returns how many
        records were deleted.
        """
        with self.db.write() as conn:
            now = self.clock()
            _lock_head(conn, now)  # no append interleaves with the purge
            through = conn.execute(sa.select(sa.func.max(audit_log.c.seq)).where(audit_log.c.at < before)).scalar()
            if through is None:
                return 0
            digest = conn.execute(sa.select(audit_log.c.hash).where(audit_log.c.seq == through)).scalar_one()
            deleted = conn.execute(sa.delete(audit_log).where(audit_log.c.seq <= through)).rowcount
            conn.execute(
                dialect_insert(conn, audit_head)
                .values(id=_BASE_ID, seq=through, hash=digest, updated_at=now)
                .on_conflict_do_update(index_elements=["id"], set_={"seq": through, "hash": digest, "updated_at": now})
            )
            append(conn, prune_entry(Head(through, digest), reason=reason), now=now)
            return int(deleted)

    def export(self, out: IO[str], *, after_seq: int = 0) -> int:
        """Write the records after ``after_seq`` as JSON lines (each verifiable on its own); returns how many."""
        count = 0
        with self._snapshot() as conn:
            for record in self._records(conn, after_seq=after_seq):
                out.write(canonical_json(record.to_json()) + "\n")
                count += 1
        return count
