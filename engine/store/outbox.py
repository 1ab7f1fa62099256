"""The transactional outbox: events are rows written in the same transaction as the change they report.

A state change and its event commit or roll back together, so the bus can never announce a change that did not
happen, nor miss one that did; the relay (engine.bus) publishes the rows afterwards, at least once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.clock import new_id
from engine.models import Event
from engine.store.prepared import Prepared
from engine.store.schema import events

# Event types, as named in the design brief.
TASK_SUBMITTED = "task.submitted"
TASK_COMPLETED = "task.completed"
TASK_FAILED = "task.failed"
TASK_DEAD_LETTERED = "task.dead_lettered"
TASK_CANCELLED = "task.cancelled"
TASK_REPLAYED = "task.replayed"
STEP_STARTED = "step.started"
STEP_COMPLETED = "step.completed"
STEP_FAILED = "step.failed"
STEP_RETRYING = "step.retrying"
APPROVAL_REQUESTED = "approval.requested"
APPROVAL_DECIDED = "approval.decided"
APPROVAL_EXPIRED = "approval.expired"
SLA_BREACHED = "sla.breached"


# Built once: this insert is on every state change's path, where building it per call showed in profiles.
_INSERT = Prepared(sa.insert(events))


def event(
    type: str, *, task_id: str | None, tenant: str | None, payload: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """An outbox row, to ``insert`` with others."""
    return {"id": new_id(), "task_id": task_id, "tenant": tenant, "type": type, "payload": payload, "created_at": now}


def insert(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert outbox rows (one statement for all of them)."""
    if rows:
        _INSERT.executemany(conn, rows)


def append(
    conn: sa.Connection,
    type: str,
    *,
    task_id: str | None,
    tenant: str | None,
    payload: dict[str, Any],
    now: datetime,
) -> str:
    row = event(type, task_id=task_id, tenant=tenant, payload=payload, now=now)
    insert(conn, [row])
    return str(row["id"])


def for_task(conn: sa.Connection, task_id: str, *, after_seq: int = 0, limit: int = 1000) -> list[Event]:
    rows = conn.execute(
        sa.select(events)
        .where(events.c.task_id == task_id, events.c.seq > after_seq)
        .order_by(events.c.seq)
        .limit(limit)
    )
    return [to_event(row) for row in rows]


# The relay's turn, one relay at a time per events table: a transaction-scoped advisory lock, in the two-key space
# (apart from the migrations' one-key lock) with the table's oid as the second key, so stores in other schemas of
# one database (the tests' schemas, or two installations) do not wait on each other. oid→int4 keeps every bit.
_RELAY_LOCK_SPACE = 0x616970  # "aip"
_RELAY_LOCK_KEYS = "CAST(CAST(CAST('events' AS regclass) AS oid) AS int4)"
_TRY_RELAY_LOCK = sa.text(f"SELECT pg_try_advisory_xact_lock({_RELAY_LOCK_SPACE}, {_RELAY_LOCK_KEYS})")
_WAIT_RELAY_LOCK = sa.text(f"SELECT pg_advisory_xact_lock({_RELAY_LOCK_SPACE}, {_RELAY_LOCK_KEYS})")


def take_relay_turn(conn: sa.Connection, *, wait: bool) -> bool:
    """PostgreSQL: hold the relay's turn until this transaction ends; False when another relay has it and
    ``wait`` is False. Run it before ``claim_unpublished``, as a statement of its own: at READ COMMITTED the claim's
    snapshot is then taken after the previous relay committed its marks, so it never sees them unpublished."""
    if not wait:
        return bool(conn.execute(_TRY_RELAY_LOCK).scalar_one())
    conn.execute(_WAIT_RELAY_LOCK)
    return True


def claim_unpublished(conn: sa.Connection, limit: int) -> list[Event]:
    """The oldest unpublished events; on PostgreSQL locked until the transaction ends (the relay's turn keeps
    other relays out already; the row locks keep a purge off rows being published). SQLite has no row locks:
    there it is a plain read (see engine.bus.OutboxRelay)."""
    rows = conn.execute(
        sa.select(events)
        .where(events.c.published_at.is_(None))
        .order_by(events.c.seq)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [to_event(row) for row in rows]


def has_unpublished(conn: sa.Connection) -> bool:
    return conn.execute(sa.select(events.c.seq).where(events.c.published_at.is_(None)).limit(1)).first() is not None


def mark_published(conn: sa.Connection, seqs: Sequence[int], now: datetime) -> None:
    if seqs:
        conn.execute(sa.update(events).where(events.c.seq.in_(list(seqs))).values(published_at=now))


def to_event(row: sa.Row[Any]) -> Event:
    return Event(
        id=row.id,
        seq=row.seq,
        task_id=row.task_id,
        tenant=row.tenant,
        type=row.type,
        payload=row.payload,
        created_at=row.created_at,
        published_at=row.published_at,
    )
