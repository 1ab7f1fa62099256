"""Retention purges and GDPR erasures in the store: what ``policies.retention`` and ``policies.erasure`` decide,
applied to the engine's tables and blobs.

``purge`` deletes, per workflow and data class, what finished tasks keep past their Policy's period (see
``policies.retention`` for what each class covers) and prunes the audit log to the longest audit period.
``erase`` removes every task of one data subject with everything that hangs off it (step runs and their
outputs, attempts, approvals, callbacks, dead letters, events, the request's idempotency record, blobs no other
row refers to, the tasks' kept payload logs) and records the erasure in the audit log, in the same transaction.
What the subject's tasks sent out of the store (published events, kafkaSink records) cannot be deleted here: the
erasure finds it (``Found``) and hands it to ``beyond``, the engine's part (spans it keeps, tombstones, and a report
of what stays where until its own retention), whose answer goes into the audit record too.

On SQLite an erasure also zeroes the freed pages (``secure_delete``) and truncates the write-ahead log, so the
subject's bytes are gone from the files, not only from the tables. On PostgreSQL deleted rows stay in the heap
until VACUUM reclaims them (autovacuum does, or run ``VACUUM`` on the tables after an erasure).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.payloads import PayloadCodec
from engine.store import audit, payload_logs
from engine.store.audit import AuditLog
from engine.store.blobs import DatabaseBlobStore
from engine.store.database import Database
from engine.store.schema import (
    agent_actions,
    approvals,
    attempts,
    blobs,
    callbacks,
    dead_letters,
    events,
    idempotency_keys,
    step_runs,
    tasks,
    workflow_heads,
)
from policies.audit import Entry
from policies.erasure import belongs, check_subject, parse_fields, subject_digest
from policies.retention import RetentionFor, cutoffs

log = logging.getLogger(__name__)
_CHUNK = 500


@dataclass
class Purged:
    """What one purge removed, by data class (rows), plus blob files and audit records."""

    inputs: int = 0
    results: int = 0
    events: int = 0
    blobs: int = 0
    audit: int = 0
    payload_logs: int = 0
    workflows: list[str] = field(default_factory=list)
    #: Tasks whose own retention (``POST /v1/tasks`` ``policy.retention``) purged them.
    own_retention: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "results": self.results,
            "events": self.events,
            "payloadLogs": self.payload_logs,
            "blobs": self.blobs,
            "audit": self.audit,
            "workflows": self.workflows,
            "ownRetention": self.own_retention,
        }


def _kept() -> timedelta | None:
    return None


@dataclass(frozen=True)
class Retention:
    """What an engine purges by: each workflow's periods, the audit log's period (asked at every purge, so a Policy
    change applies to the next one), what to do after a purge (set a Kafka topic's retention), and each Model's
    periods (``models``: its ``payload_logs`` period purges its predictions' payload logs, which have no workflow)."""

    periods: RetentionFor
    audit: Callable[[], timedelta | None] = _kept
    after: Callable[[Purged], None] | None = None
    models: RetentionFor | None = None


@dataclass(frozen=True)
class SentRecord:
    """A record a kafkaSink step of an erased task published (the step's output names its topic and key), or one of
    its agent step's connector actions (``action``: the action's name; its observation names them)."""

    workflow: str
    version: str
    step: str
    topic: str
    key: str
    action: str | None = None


@dataclass(frozen=True)
class Found:
    """What an erasure found that the subject's tasks sent beyond the store, for ``erase``'s ``beyond``."""

    tasks: tuple[str, ...]
    #: Events of the tasks the outbox had published to the bus.
    published_events: int
    records: tuple[SentRecord, ...]


@dataclass(frozen=True)
class Erased:
    """What one erasure removed; ``record`` is the audit record's seq; ``beyond``: what ``erase``'s ``beyond``
    reported (spans forgotten, tombstones sent, ``remaining``: where the subject's data stays until its own
    retention), as in the audit record."""

    subject_digest: str
    tasks: tuple[str, ...]
    events: int
    blobs: int
    record: int
    payload_logs: int = 0
    beyond: dict[str, Any] = field(default_factory=dict)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _finished(workflow: str, before: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(tasks.c.workflow == workflow, tasks.c.finished_at.is_not(None), tasks.c.finished_at < before)


def purge(
    db: Database,
    codec: PayloadCodec,
    retention_for: RetentionFor,
    *,
    now: datetime,
    audit_period: timedelta | None = None,
    audit_log: AuditLog | None = None,
    model_retention_for: RetentionFor | None = None,
) -> Purged:
    """Delete what retention says is expired at ``now`` (one transaction per workflow, then the audit prune);
    ``model_retention_for``: each Model's periods, whose ``payload_logs`` purges its predictions' payload logs."""
    purged = Purged()
    if model_retention_for is not None:
        with db.read() as conn:
            models = payload_logs.predicted_models(conn)
        for model in models:
            if (logs := model_retention_for(model).get("payload_logs")) is not None:
                with db.write() as conn:
                    purged.payload_logs += payload_logs.purge_predictions(conn, model, now - logs)
    with db.read() as conn:
        names = [row.name for row in conn.execute(sa.select(workflow_heads.c.name).order_by(workflow_heads.c.name))]
    for workflow in names:
        periods = retention_for(workflow)
        if (logs := periods.get("payload_logs")) is not None:  # from when each was written
            with db.write() as conn:
                purged.payload_logs += payload_logs.purge(conn, workflow, now - logs)
        cut = cutoffs(periods, now)
        if not cut.any:
            continue
        with db.write() as conn:
            _purge_classes(
                conn,
                codec,
                purged,
                inputs=_finished(workflow, cut.inputs) if cut.inputs is not None else None,
                results=_finished(workflow, cut.results) if cut.results is not None else None,
                events_of=_finished(workflow, cut.events) if cut.events is not None else None,
            )
        purged.workflows.append(workflow)
    purge_own_retention(db, codec, now=now, purged=purged)
    if audit_period is not None and audit_log is not None:
        purged.audit = audit_log.prune(before=now - audit_period, reason="retention")
    return purged


def purge_own_retention(db: Database, codec: PayloadCodec, *, now: datetime, purged: Purged | None = None) -> Purged:
    """Purge every stored class (inputs, results, events, payload logs) of the finished tasks whose own retention
    (the submitter's ``policy.retention`` annotation) has passed since they finished (``tasks.purge_after``, set
    when a task finishes). It only narrows: what the Policies' periods purge goes anyway, whichever is shorter comes
    first. Counted into ``purged``."""
    purged = purged if purged is not None else Purged()
    query = sa.select(tasks.c.id).where(tasks.c.purge_after < now).order_by(tasks.c.purge_after).limit(_CHUNK)
    while True:
        with db.write() as conn:
            chunk = list(conn.execute(query).scalars())
            if not chunk:
                return purged
            where = tasks.c.id.in_(chunk)
            _purge_classes(conn, codec, purged, inputs=where, results=where, events_of=where)
            purged.payload_logs += payload_logs.erase(conn, chunk)
            conn.execute(sa.update(tasks).where(where).values(purge_after=None))
        purged.own_retention += len(chunk)


def _purge_classes(
    conn: sa.Connection,
    codec: PayloadCodec,
    purged: Purged,
    *,
    inputs: sa.ColumnElement[bool] | None,
    results: sa.ColumnElement[bool] | None,
    events_of: sa.ColumnElement[bool] | None,
) -> None:
    """Delete, per data class, the data of the tasks each clause selects (None: that class is kept), then the
    blobs nothing refers to any more; counted into ``purged``."""
    refs: set[str] = set()
    if inputs is not None:
        where = sa.and_(inputs, sa.or_(tasks.c.input.is_not(None), tasks.c.input_ref.is_not(None)))
        refs.update(r for (r,) in conn.execute(sa.select(tasks.c.input_ref).where(where)) if r)
        purged.inputs += conn.execute(sa.update(tasks).where(where).values(input=None, input_ref=None)).rowcount
    if results is not None:
        done = sa.select(tasks.c.id).where(results).scalar_subquery()
        where = sa.and_(
            results, sa.or_(tasks.c.result.is_not(None), tasks.c.result_ref.is_not(None), tasks.c.vars != {})
        )
        refs.update(r for (r,) in conn.execute(sa.select(tasks.c.result_ref).where(where)) if r)
        purged.results += conn.execute(
            sa.update(tasks).where(where).values(result=None, result_ref=None, vars={})
        ).rowcount
        outputs = sa.and_(
            step_runs.c.task_id.in_(done),
            sa.or_(step_runs.c.output.is_not(None), step_runs.c.output_ref.is_not(None)),
        )
        refs.update(r for (r,) in conn.execute(sa.select(step_runs.c.output_ref).where(outputs)) if r)
        conn.execute(sa.update(step_runs).where(outputs).values(output=None, output_ref=None))
        # Agent steps' observations are step results too; their decision records stay for auditors.
        observations = sa.and_(
            agent_actions.c.task_id.in_(done),
            sa.or_(agent_actions.c.observation.is_not(None), agent_actions.c.observation_ref.is_not(None)),
        )
        refs.update(r for (r,) in conn.execute(sa.select(agent_actions.c.observation_ref).where(observations)) if r)
        conn.execute(sa.update(agent_actions).where(observations).values(observation=None, observation_ref=None))
        conn.execute(sa.delete(callbacks).where(callbacks.c.task_id.in_(done), callbacks.c.state != "pending"))
    if events_of is not None:
        done = sa.select(tasks.c.id).where(events_of).scalar_subquery()
        # Only published events: an unpublished one is still owed to the bus.
        purged.events += conn.execute(
            sa.delete(events).where(events.c.task_id.in_(done), events.c.published_at.is_not(None))
        ).rowcount
    purged.blobs += _drop_unreferenced(conn, codec, refs)


def _drop_unreferenced(conn: sa.Connection, codec: PayloadCodec, refs: Iterable[str]) -> int:
    """Delete the blobs among ``refs`` no row refers to any more (blobs are shared by content)."""
    delete: Callable[[str], bool] | None = getattr(codec.blobs, "delete", None)
    if isinstance(codec.blobs, DatabaseBlobStore):
        # In this transaction: a purge or erasure that rolls back keeps its blobs.
        def delete(ref: str) -> bool:
            return bool(conn.execute(sa.delete(blobs).where(blobs.c.ref == ref)).rowcount == 1)

    if delete is None:
        return 0
    dropped = 0
    for ref in sorted(set(refs)):
        used = conn.execute(
            sa.union_all(
                sa.select(tasks.c.id).where(sa.or_(tasks.c.input_ref == ref, tasks.c.result_ref == ref)),
                sa.select(step_runs.c.id).where(step_runs.c.output_ref == ref),
                sa.select(agent_actions.c.id).where(agent_actions.c.observation_ref == ref),
            ).limit(1)
        ).first()
        if used is None and delete(ref):
            dropped += 1
    return dropped


def _subject_tasks(
    conn: sa.Connection, codec: PayloadCodec, subject: str, fields: tuple[tuple[str, ...], ...], tenant: str | None
) -> list[Any]:
    query = sa.select(
        tasks.c.id,
        tasks.c.tenant,
        tasks.c.workflow,
        tasks.c.workflow_version,
        tasks.c.annotations,
        tasks.c.input,
        tasks.c.input_ref,
        tasks.c.request_key,
    )
    if tenant is not None:
        query = query.where(tasks.c.tenant == tenant)
    if not fields:
        # Only the annotation can match: skip rows that have none.
        query = query.where(tasks.c.annotations.is_not(None))
    found = []
    for row in conn.execute(query.execution_options(yield_per=_CHUNK)):
        needs_input = bool(fields) and not (row.annotations and belongs(subject, row.annotations, None, ()))
        value = codec.decode(row.input, row.input_ref) if needs_input else None
        if belongs(subject, row.annotations, value, fields):
            found.append(row)
    return found


def erase(
    db: Database,
    codec: PayloadCodec,
    subject: str,
    *,
    fields: Iterable[str] = (),
    actor: str,
    now: datetime,
    tenant: str | None = None,
    beyond: Callable[[Found], dict[str, Any]] | None = None,
) -> Erased:
    """Remove every task of ``subject`` (in ``tenant`` only, when given: a tenant admin's request) and what hangs
    off it, and audit the erasure (see the module docstring). ``beyond`` is called in the transaction, before the
    audit record, with what the tasks sent out of the store; what it answers (never the subject in clear) goes into
    the record."""
    check_subject(subject)
    paths = parse_fields(fields)
    digest = subject_digest(subject)
    with db.write() as conn:
        if db.is_sqlite:
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
        rows = _subject_tasks(conn, codec, subject, paths, tenant)
        ids = [row.id for row in rows]
        refs = {r for row in rows for r in (row.input_ref,) if r}
        removed_events = published = removed_logs = 0
        sent: list[SentRecord] = []
        where = {row.id: (row.workflow, row.workflow_version) for row in rows}
        for chunk in _chunks(ids):
            published += conn.execute(
                sa.select(sa.func.count()).where(events.c.task_id.in_(chunk), events.c.published_at.is_not(None))
            ).scalar_one()
            sent.extend(_sent_records(conn, codec, chunk, where))
            removed_logs += payload_logs.erase(conn, chunk)
            refs.update(
                r for (r,) in conn.execute(sa.select(tasks.c.result_ref).where(tasks.c.id.in_(chunk))) if r is not None
            )
            refs.update(
                r
                for (r,) in conn.execute(sa.select(step_runs.c.output_ref).where(step_runs.c.task_id.in_(chunk)))
                if r is not None
            )
            refs.update(
                r
                for (r,) in conn.execute(
                    sa.select(agent_actions.c.observation_ref).where(agent_actions.c.task_id.in_(chunk))
                )
                if r is not None
            )
            conn.execute(sa.delete(attempts).where(attempts.c.task_id.in_(chunk)))
            for table in (agent_actions, approvals, callbacks, dead_letters, step_runs):
                conn.execute(sa.delete(table).where(table.c.task_id.in_(chunk)))
            removed_events += conn.execute(sa.delete(events).where(events.c.task_id.in_(chunk))).rowcount
            conn.execute(sa.delete(tasks).where(tasks.c.id.in_(chunk)))
        for row in rows:
            if row.request_key is not None:
                conn.execute(
                    sa.delete(idempotency_keys).where(
                        idempotency_keys.c.tenant == row.tenant, idempotency_keys.c.key == row.request_key
                    )
                )
        blobs = _drop_unreferenced(conn, codec, refs)
        reported = beyond(Found(tuple(ids), published, tuple(sent))) if beyond is not None and ids else {}
        details = {
            "subjectDigest": digest,
            "tasks": ids,
            "fields": [".".join(p) for p in paths],
            "events": removed_events,
            "blobs": blobs,
            "payloadLogs": removed_logs,
            **reported,
        }
        record = audit.append(
            conn, Entry("erasure", f"subject/{digest}", "erased", details, tenant=tenant, actor=actor), now=now
        )
        if db.is_sqlite:
            conn.exec_driver_sql("PRAGMA secure_delete=OFF")
    if db.is_sqlite:
        _checkpoint(db)
    log.info("erased %d tasks of a subject", len(ids), extra={"subject_digest": digest, "audit_seq": record.seq})
    return Erased(digest, tuple(ids), removed_events, blobs, record.seq, removed_logs, reported)


def remaining(
    found: Found,
    *,
    tombstone: Callable[[SentRecord], bool] | None = None,
    results_period: Callable[[str], timedelta | None] | None = None,
) -> list[dict[str, Any]]:
    """Where the erased tasks' data stays outside the store until its own retention, by place and count (never a
    key or a value): the events the outbox published (the events topic on Kafka) and, per kafkaSink topic, the
    records the tasks' steps published, how many of their keys got a ``tombstone`` (a compacted topic drops a
    tombstoned key's records at its next compaction) and the topic's retention by ``results_period`` (the shortest
    of its workflows')."""
    places: list[dict[str, Any]] = []
    if found.published_events:
        places.append({"place": "events", "records": found.published_events, "until": "the events topic's retention"})
    topics: dict[str, dict[str, Any]] = {}
    for sent in found.records:
        entry = topics.setdefault(
            sent.topic,
            {
                "place": "kafka-topic",
                "topic": sent.topic,
                "records": 0,
                "tombstones": 0,
                "until": "compaction of the tombstoned keys, or the topic's retention",
            },
        )
        entry["records"] += 1
        if tombstone is not None and tombstone(sent):
            entry["tombstones"] += 1
        period = results_period(sent.workflow) if results_period is not None else None
        if period is not None:
            seconds = period.total_seconds()
            entry["retentionSeconds"] = min(entry.get("retentionSeconds", seconds), seconds)
    return [*places, *topics.values()]


def _sent_records(
    conn: sa.Connection, codec: PayloadCodec, chunk: Sequence[str], where: dict[str, tuple[str, str]]
) -> list[SentRecord]:
    """The kafkaSink records the tasks' connector steps published: such a step's output is ``{topic, key}``."""
    query = sa.select(step_runs.c.task_id, step_runs.c.name, step_runs.c.output, step_runs.c.output_ref).where(
        step_runs.c.task_id.in_(chunk),
        step_runs.c.type == "connector",
        sa.or_(step_runs.c.output.is_not(None), step_runs.c.output_ref.is_not(None)),
    )
    found = []
    for row in conn.execute(query):
        output = codec.decode(row.output, row.output_ref)
        if isinstance(output, dict) and set(output) == {"topic", "key"}:
            workflow, version = where[row.task_id]
            found.append(SentRecord(workflow, version, row.name, str(output["topic"]), str(output["key"])))
    actions = (
        sa.select(
            agent_actions.c.task_id,
            step_runs.c.name,
            agent_actions.c.proposal,
            agent_actions.c.observation,
            agent_actions.c.observation_ref,
        )
        .join(step_runs, step_runs.c.id == agent_actions.c.step_run_id)
        .where(
            agent_actions.c.task_id.in_(chunk),
            sa.or_(agent_actions.c.observation.is_not(None), agent_actions.c.observation_ref.is_not(None)),
        )
    )
    for taken in conn.execute(actions):
        observation = codec.decode(taken.observation, taken.observation_ref)
        action = taken.proposal.get("action") if isinstance(taken.proposal, dict) else None
        if isinstance(observation, dict) and set(observation) == {"topic", "key"} and isinstance(action, str):
            workflow, version = where[taken.task_id]
            topic, key = str(observation["topic"]), str(observation["key"])
            found.append(SentRecord(workflow, version, taken.name, topic, key, action))
    return found


def _checkpoint(db: Database) -> None:
    """Copy the write-ahead log into the database and truncate it: the erased rows' old pages live there too."""
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        busy = cursor.fetchone()
        cursor.close()
    finally:
        raw.close()
    if busy and busy[0]:
        log.warning("the write-ahead log could not be truncated after an erasure (readers were active); retry it")
