"""Payload logs kept in the store (the ``payload_logs`` table), so that retention and erasure reach them.

``policies.payloads.PayloadLog`` samples and masks; ``PayloadLogStore.keep`` is where its records go when an
engine keeps them (``Engine(payloads=...)`` wires it). The ``aiplane.payloads`` log line then says that a record
was kept, without the payloads, so no copy of a subject's data leaves through the process's logs. A retention
``payloadLogs`` period deletes a workflow's records older than it, and the records of a Model's predictions (no
task, no workflow) by the period of the Policies selecting the Model (``engine.store.purge.purge``); an erasure
deletes those of the erased tasks (``engine.store.purge.erase``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.clock import new_id
from engine.store.database import Database
from engine.store.schema import payload_logs


class PayloadLogStore:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    def keep(self, record: Mapping[str, Any]) -> None:
        """Store one payload log record (``tenant``, ``workflow`` or ``model``, ``task_id`` when it has one)."""
        with self.db.write() as conn:
            conn.execute(
                sa.insert(payload_logs).values(
                    id=new_id(),
                    tenant=record["tenant"],
                    workflow=record.get("workflow"),
                    model=record.get("model"),
                    task_id=record.get("task_id"),
                    record=dict(record),
                    created_at=self.clock(),
                )
            )

    def records(self, *, tenant: str | None = None, task_id: str | None = None) -> list[dict[str, Any]]:
        """The kept records, oldest first (of one tenant, or one task)."""
        query = sa.select(payload_logs.c.record).order_by(payload_logs.c.created_at, payload_logs.c.id)
        if tenant is not None:
            query = query.where(payload_logs.c.tenant == tenant)
        if task_id is not None:
            query = query.where(payload_logs.c.task_id == task_id)
        with self.db.read() as conn:
            return [dict(record) for record in conn.execute(query).scalars()]


def erase(conn: sa.Connection, task_ids: Sequence[str]) -> int:
    """Delete the records of ``task_ids`` (in the caller's transaction); how many went."""
    if not task_ids:
        return 0
    return int(conn.execute(sa.delete(payload_logs).where(payload_logs.c.task_id.in_(task_ids))).rowcount)


def purge(conn: sa.Connection, workflow: str, before: datetime) -> int:
    """Delete ``workflow``'s records written before ``before``; how many went."""
    where = sa.and_(payload_logs.c.workflow == workflow, payload_logs.c.created_at < before)
    return int(conn.execute(sa.delete(payload_logs).where(where)).rowcount)


def predicted_models(conn: sa.Connection) -> list[str]:
    """The Models whose predictions (records of no workflow) have records kept."""
    query = (
        sa.select(payload_logs.c.model)
        .where(payload_logs.c.workflow.is_(None), payload_logs.c.model.is_not(None))
        .distinct()
        .order_by(payload_logs.c.model)
    )
    return [str(model) for model in conn.execute(query).scalars()]


def purge_predictions(conn: sa.Connection, model: str, before: datetime) -> int:
    """Delete the records of ``model``'s predictions written before ``before``; how many went."""
    where = sa.and_(
        payload_logs.c.workflow.is_(None), payload_logs.c.model == model, payload_logs.c.created_at < before
    )
    return int(conn.execute(sa.delete(payload_logs).where(where)).rowcount)
