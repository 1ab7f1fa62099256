"""Batch intake for sources: many inputs of one workflow, for one tenant, become tasks in one transaction.

``Intake.submit`` takes any mix of submissions and answers each with its task. A Kafka source's poll is hundreds
of inputs that share their workflow, tenant and priority, and the source only needs to know which of them became
new tasks. So here what the batch shares (the workflow version, the Policies' admission, the first step, the
timestamps, the event's payload) is decided and converted once, the rows are written column by column
(``Prepared.executemany_columns``, one statement per table), and each input is answered with its task id and
whether the task is new (``Taken``), or the error that refused it. The rows are those ``Intake.submit`` writes
for the same submissions (tests/engine/test_bulk_intake.py compares them).

Per input, in ``Intake``'s order, and never a write for one that is refused: masked (PII Policies, before the
transaction), canonical JSON (inline or a blob; its hash is the task's ``request_hash``), ``Batch.check``, then
``Batch.validate``. Then the tasks are inserted ignoring conflicts: every task has an idempotency key, and the
insert's row count says whether all of them went in; only when some did not (a batch read again after a crash, a
key twice in one batch) are they told apart, each repeated one answered with the earlier task of its key, or
``IdempotencyMismatchError`` when that task's input differs.

A batch the Policies deny (tenant, residency: their audit records), or whose workflow starts with a step that
writes more than a step run (an approval), goes through ``Intake.submit`` instead, as one submission per input.

Quotas (``policies.quota``) hold for a batch as for the gateway's submissions: in the write transaction the
tenant's unfinished tasks are counted (of all classes, and of the batch's class), and only as many inputs as both
quotas leave room for are taken, the first ones in the batch's order; each of the rest is answered with
``QuotaExceededError`` and nothing is written for it. A source leaves those messages on its topic and reads them
again later (``connectors.kafka.source``): the quota is back-pressure, not a refusal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa

from crds.workflow import WorkflowSpec
from engine.clock import new_id, new_ids
from engine.durations import parse_duration
from engine.errors import EngineError, IdempotencyMismatchError, InvalidRequestError, QuotaExceededError
from engine.flow import definitions, graph
from engine.models import Priority, TaskState
from engine.runtime.intake import (
    _IN_FLIGHT,
    _IN_FLIGHT_OF_CLASS,
    _QUOTA_LOCK,
    Accepted,
    Intake,
    Submission,
    fresh_task_columns,
)
from engine.runtime.queue import parse_priority
from engine.runtime.transitions import Entry, step_idempotency_key
from engine.store import audit, outbox
from engine.store.database import dialect_insert
from engine.store.prepared import Prepared
from engine.store.schema import events, step_runs, tasks
from engine.store.types import dumps

if TYPE_CHECKING:
    from policies.admission import Governance
    from policies.audit import Entry as AuditEntry
    from policies.masking import MaskSummary

#: Most values in one ``IN (...)`` of the rare reads (SQLite's limit on parameters is far above).
_CHUNK = 500
_INSERT_RUN = Prepared(sa.insert(step_runs))
_INSERT_EVENT = Prepared(sa.insert(events))


class _Checked(NamedTuple):
    """An input nothing refused: where it is in the batch, its JSON (inline, or a blob ref), the JSON's digest."""

    item: int
    inline: str | None
    ref: str | None
    digest: str


class Taken(NamedTuple):
    """An input's task: new, or (``created`` False) the earlier task with its idempotency key and the same input."""

    task_id: str
    created: bool


BatchOutcome = Taken | Exception


@dataclass(frozen=True, kw_only=True)
class Batch:
    """Inputs of one workflow for one tenant, each with its task idempotency key (sources deliver at least once)."""

    tenant: str
    workflow: str
    inputs: Sequence[Any]
    keys: Sequence[str]
    #: W3C traceparent per input, or None.
    trace_contexts: Sequence[str | None]
    priority: Priority | str = Priority.NORMAL
    #: The workflow version; None for the current one.
    version: str | None = None
    #: Called with each input, the resolved version and its spec before anything is written; raising refuses
    #: that input (the error is its outcome).
    check: Callable[[Any, str, WorkflowSpec], None] | None = None
    #: Called once with the resolved version and its spec; raising refuses every input that ``check`` passed.
    validate: Callable[[str, WorkflowSpec], None] | None = None

    def __post_init__(self) -> None:
        if not len(self.inputs) == len(self.keys) == len(self.trace_contexts):
            raise ValueError("a batch needs one idempotency key and one trace context per input")


class BulkIntake:
    """``Intake``'s batch path for sources; the intake's ``pii`` and ``admission`` apply as they do there."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self._inserts: dict[str, Prepared] = {}

    def submit(self, batch: Batch) -> list[BatchOutcome]:
        """One outcome per input, in order. Database errors fail the whole batch (raised)."""
        intake = self.intake
        count = len(batch.inputs)
        try:
            level = parse_priority(batch.priority)
            with intake.db.read() as conn:
                version = batch.version or definitions.head_version(conn, batch.workflow)
                spec = definitions.load(conn, batch.workflow, version)
        except EngineError as exc:
            return [exc] * count
        now = intake.clock()
        step = graph.first_step(spec)
        template = intake.machine.entry(_task_values(new_id(), batch.tenant, level), step, now)
        denied = intake.admission is not None and intake.admission.check(batch.tenant, batch.workflow, spec)
        if denied or template.approval is not None or template.attempt is not None or template.events:
            # Rare for a source (a tenant the Policies deny; a workflow that starts with an approval): the general
            # intake, for the records and rows it writes then.
            return self._one_by_one(batch, version)
        outcomes: list[BatchOutcome | None] = [None] * count
        inputs = list(batch.inputs)
        masked: list[MaskSummary | None] = [None] * count
        if intake.pii is not None:  # before the write transaction: detection takes milliseconds per input
            for index, value in enumerate(inputs):
                result = intake.pii.mask_input(batch.tenant, batch.workflow, value)
                inputs[index], masked[index] = result.value, result.summary
        accepted = self._check(batch, inputs, version, spec, outcomes)
        governance = intake.governance(batch.workflow)
        if accepted:
            with intake.db.write() as conn:
                accepted = self._within_quota(conn, batch.tenant, level, accepted, outcomes)
                created = self._write(
                    conn,
                    batch=batch,
                    accepted=accepted,
                    spec=spec,
                    template=template,
                    version=version,
                    governance=governance,
                    now=now,
                    outcomes=outcomes,
                )
                for index, task_id in created:
                    outcomes[index] = Taken(task_id, True)
                audit.append_many(conn, self._entries(batch, created, masked, version, governance), now=now)
        assert all(outcome is not None for outcome in outcomes)
        return [outcome for outcome in outcomes if outcome is not None]

    def _entries(
        self,
        batch: Batch,
        created: list[tuple[int, str]],
        masked: list[MaskSummary | None],
        version: str,
        governance: Governance | None,
    ) -> list[AuditEntry]:
        """The audit records of the new tasks, as ``Intake`` writes them: an allow record each when a Policy governs
        the workflow, a masking record each whose input was masked."""
        pii = self.intake.pii
        entries: list[AuditEntry] = []
        for index, task_id in created:
            if governance is not None:
                entries.append(
                    governance.allow_entry(
                        task_id, tenant=batch.tenant, workflow=batch.workflow, version=version, by=None
                    )
                )
            if pii is not None and (summary := masked[index]):
                entries.append(
                    pii.audit_entry(batch.tenant, batch.workflow, f"task/{task_id}/input", summary, actor="engine")
                )
        return entries

    def _one_by_one(self, batch: Batch, version: str) -> list[BatchOutcome]:
        """The batch through ``Intake.submit``, as submissions; the same outcomes, as ``Taken``."""
        check, validate = batch.check, batch.validate

        def refuse(value: Any) -> Callable[[str, WorkflowSpec], None]:
            def run(version: str, spec: WorkflowSpec) -> None:
                if check is not None:
                    check(value, version, spec)
                if validate is not None:
                    validate(version, spec)

            return run

        submissions = [
            Submission(
                tenant=batch.tenant,
                workflow=batch.workflow,
                input=value,
                version=version,
                priority=batch.priority,
                idempotency_key=key,
                trace_context=trace_context,
                validate=refuse(value),
            )
            for value, key, trace_context in zip(batch.inputs, batch.keys, batch.trace_contexts, strict=True)
        ]
        outcomes: list[BatchOutcome] = []
        for outcome in self.intake.submit(submissions):
            if isinstance(outcome, Accepted):
                outcomes.append(Taken(outcome.task.id, outcome.created))
            else:
                assert isinstance(outcome, Exception)  # never Replayed: no request keys
                outcomes.append(outcome)
        return outcomes

    # ---------------------------------------------------------------- before writing

    def _check(
        self,
        batch: Batch,
        inputs: list[Any],
        version: str,
        spec: WorkflowSpec,
        outcomes: list[BatchOutcome | None],
    ) -> list[_Checked]:
        """The inputs nothing refused; the refused ones get their error as their outcome (``Intake``'s order: JSON,
        the caller's check of the input, then the caller's check of the batch)."""
        refusal: Exception | None = None
        if batch.validate is not None:
            try:
                batch.validate(version, spec)
            except Exception as exc:  # the caller's own error type, handed back as the outcomes
                refusal = exc
        codec = self.intake.codec
        check = batch.check
        accepted: list[_Checked] = []
        for index, value in enumerate(inputs):
            try:
                text = dumps(value)
            except (TypeError, ValueError) as exc:
                outcomes[index] = InvalidRequestError(f"task input must be JSON: {exc}", field="input")
                continue
            if check is not None:
                try:
                    check(value, version, spec)
                except Exception as exc:  # the caller's own error type, handed back as the outcome
                    outcomes[index] = exc
                    continue
            if refusal is not None:
                outcomes[index] = refusal
                continue
            # One serialisation for the stored input and its hash: the bytes of PayloadCodec.encode and
            # request_hash.
            data = text.encode()
            digest = hashlib.sha256(data).hexdigest()
            if len(data) <= codec.inline_limit:
                accepted.append(_Checked(index, text, None, digest))
            else:
                accepted.append(_Checked(index, None, codec.blobs.put(data), digest))
        return accepted

    # ---------------------------------------------------------------- the rows

    def _write(
        self,
        conn: sa.Connection,
        *,
        batch: Batch,
        accepted: list[_Checked],
        spec: WorkflowSpec,
        template: Entry,
        version: str,
        governance: Governance | None,
        now: datetime,
        outcomes: list[BatchOutcome | None],
    ) -> list[tuple[int, str]]:
        """Insert the tasks, and the first step run and event of the new ones: (index, task id) of those."""
        if not accepted:  # the quota left no room
            return []
        ids = new_ids(len(accepted))
        level = template.run["priority"]
        shared: dict[str, Any] = {
            "tenant": batch.tenant,
            "workflow": batch.workflow,
            "workflow_version": version,
            "priority": level,
            "deadline": now + parse_duration(spec.sla.deadline) if spec.sla is not None else None,
            "annotations": None,
            "callback_url": None,
            "submitted_by": None,
            "request_key": None,
            "region": None,  # a source's tasks have no region of their own: their workflow's pin governs them
            **fresh_task_columns(now),
            **template.task,
        }
        columns: dict[str, Sequence[Any]] = {
            "id": ids,
            "input": [checked.inline for checked in accepted],
            "input_ref": [checked.ref for checked in accepted],
            "idempotency_key": [batch.keys[checked.item] for checked in accepted],
            "request_hash": [checked.digest for checked in accepted],
            "trace_context": [batch.trace_contexts[checked.item] for checked in accepted],
        }
        inserted = self._insert_tasks(conn).executemany_columns(conn, len(ids), columns, shared)
        positions = range(len(ids)) if inserted == len(ids) else self._repeated(conn, batch, accepted, ids, outcomes)
        created = [(accepted[position].item, ids[position]) for position in positions]
        if not created:
            return created
        task_ids = [task_id for _, task_id in created]
        # Entering the first step writes the same run for every task but for the run's id, task and idempotency
        # key (``template``: what it writes for another task).
        run = dict(template.run)
        template_id, seq, name = run.pop("task_id"), run["seq"], run["name"]
        del run["id"], run["idempotency_key"]
        assert not any(isinstance(value, str) and template_id in value for value in run.values()), run
        runs = {
            "id": new_ids(len(task_ids)),
            "task_id": task_ids,
            "idempotency_key": [step_idempotency_key(task_id, seq, name) for task_id in task_ids],
        }
        _INSERT_RUN.executemany_columns(conn, len(task_ids), runs, run)
        submitted = {
            "tenant": batch.tenant,
            "type": outbox.TASK_SUBMITTED,
            "payload": self.intake.submitted_payload(batch.workflow, version, level, governance),
            "created_at": now,
        }
        _INSERT_EVENT.executemany_columns(
            conn, len(task_ids), {"id": new_ids(len(task_ids)), "task_id": task_ids}, submitted
        )
        return created

    def _within_quota(
        self,
        conn: sa.Connection,
        tenant: str,
        level: Priority,
        accepted: list[_Checked],
        outcomes: list[BatchOutcome | None],
    ) -> list[_Checked]:
        """The first of ``accepted`` that the tenant's quotas (of all classes and of ``level``) leave room for;
        the others are answered with ``QuotaExceededError``. Counted in this transaction, as ``Intake`` counts."""
        quota = self.intake.quota
        if quota is None:
            return accepted
        limits = [(of, limit) for of in (None, level.value) if (limit := quota(tenant, of)) is not None]
        if not limits:
            return accepted
        if conn.dialect.name == "postgresql":  # take turns with gateways admitting for the tenant (see Intake)
            conn.execute(_QUOTA_LOCK, {"name": f"aiplane-quota:{tenant}"})
        room, refusal = len(accepted), None
        for of, limit in limits:
            if of is None:
                count = conn.execute(_IN_FLIGHT, {"tenant": tenant}).scalar_one()
            else:
                count = conn.execute(_IN_FLIGHT_OF_CLASS, {"tenant": tenant, "priority": of}).scalar_one()
            if limit - count < room:
                room = max(limit - count, 0)
                what = "unfinished tasks" if of is None else f"unfinished {of}-priority tasks"
                refusal = QuotaExceededError(
                    f"tenant {tenant!r} has {count} {what}, as many as its Policies' quota allows "
                    f"(maxTasksInFlight {limit}{'' if of is None else f' for priority {of}'}); the rest waits "
                    "until some have finished",
                    tenant=tenant,
                    limit=limit,
                    **({"priority": of} if of is not None else {}),
                )
        if refusal is None:
            return accepted
        for checked in accepted[room:]:
            outcomes[checked.item] = refusal
        return accepted[:room]

    def _insert_tasks(self, conn: sa.Connection) -> Prepared:
        """Tasks whose idempotency key is there already are not inserted (the row count says how many went in)."""
        statement = self._inserts.get(conn.dialect.name)
        if statement is None:
            statement = self._inserts[conn.dialect.name] = Prepared(
                dialect_insert(conn, tasks).on_conflict_do_nothing()
            )
        return statement

    @staticmethod
    def _repeated(
        conn: sa.Connection,
        batch: Batch,
        accepted: list[_Checked],
        ids: list[str],
        outcomes: list[BatchOutcome | None],
    ) -> list[int]:
        """Positions (in ``accepted``) of the tasks that went in; each of the others is answered with the earlier
        task of its key (a batch read again, or a key twice in this one), or a mismatch if that task's input
        differs."""
        present: set[str] = set()
        for start in range(0, len(ids), _CHUNK):
            query = sa.select(tasks.c.id).where(tasks.c.id.in_(ids[start : start + _CHUNK]))
            present.update(conn.execute(query).scalars())
        repeated = [position for position, task_id in enumerate(ids) if task_id not in present]
        wanted = sorted({batch.keys[accepted[position].item] for position in repeated})
        earlier: dict[str, tuple[str, str | None]] = {}
        for start in range(0, len(wanted), _CHUNK):
            query = sa.select(tasks.c.idempotency_key, tasks.c.id, tasks.c.request_hash).where(
                tasks.c.tenant == batch.tenant, tasks.c.idempotency_key.in_(wanted[start : start + _CHUNK])
            )
            earlier.update({key: (task_id, digest) for key, task_id, digest in conn.execute(query)})
        for position in repeated:
            index = accepted[position].item
            key = batch.keys[index]
            task_id, digest = earlier[key]
            if digest != accepted[position].digest:
                outcomes[index] = IdempotencyMismatchError(
                    "a task was already submitted with this idempotency key and a different input",
                    key=key,
                    task_id=task_id,
                )
            else:
                outcomes[index] = Taken(task_id, False)
        return [position for position, task_id in enumerate(ids) if task_id in present]


def _task_values(task_id: str, tenant: str, level: Priority) -> SimpleNamespace:
    """What ``StateMachine.entry`` reads of a new task."""
    return SimpleNamespace(id=task_id, tenant=tenant, state=TaskState.QUEUED, priority=level, step_seq=0)
