"""Intake: submissions become tasks, a batch of them per transaction.

``Intake.submit`` writes a whole batch with one statement per table (the batch's idempotency records, tasks,
first step runs, approvals and events) and one commit. The gateway gathers concurrent requests into a batch
(group commit, ``api.batching``), so they share the commit's fsync and the statements' fixed costs; a caller
with one submission pays what it always did.

Per submission, and never a write for one that fails a check:

1. resolve the workflow version, ask the Policies whether the tenant may submit it at all (``Intake.admission``:
   tenants, residency), check the input (``Submission.validate``) and decide the task's rows, first
   step included, before writing anything;
2. claim the request's Idempotency-Key (``RequestKey``): a new key is inserted already answered with the caller's
   response when the caller can give it now (an async submission's answer is the new task, known from step 1),
   else in flight (a sync caller answers after waiting); a key already there gives its stored response, a
   mismatch or a conflict instead (``IdempotencyStore.settle``), and no task;
3. insert the task; with a task-level ``idempotency_key`` (a Kafka source's message id), an existing task with
   that key is returned instead of a second one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from crds.workflow import WorkflowSpec
from engine.clock import Clock, new_id
from engine.durations import parse_duration
from engine.errors import (
    EngineError,
    IdempotencyMismatchError,
    InvalidRequestError,
    PolicyDeniedError,
    QuotaExceededError,
)
from engine.flow import definitions, graph
from engine.models import Priority, StepRun, Task, TaskState
from engine.payloads import PayloadCodec
from engine.runtime import records
from engine.runtime.queue import parse_priority
from engine.runtime.transitions import Entry, StateMachine
from engine.store import audit, outbox
from engine.store.database import Database
from engine.store.idempotency import Claim, IdempotencyStore, check_key, request_hash
from engine.store.prepared import InsertIgnoringConflicts, Prepared
from engine.store.schema import approvals, idempotency_keys, step_runs, tasks
from policies import audit as decisions
from policies import metrics as policy_metrics
from policies.admission import Governance

if TYPE_CHECKING:
    from crds.policy import Policy
    from policies.admission import Admission
    from policies.masking import MaskSummary, WorkflowMasking

_INSERT_TASK = Prepared(sa.insert(tasks))
_INSERT_RUN = Prepared(sa.insert(step_runs))
_INSERT_APPROVAL = Prepared(sa.insert(approvals))
_KEY_ROW = sa.select(idempotency_keys).where(
    idempotency_keys.c.tenant == sa.bindparam("_tenant"), idempotency_keys.c.key == sa.bindparam("_key")
)
_UNFINISHED = (TaskState.QUEUED, TaskState.RUNNING, TaskState.WAITING)
_IN_FLIGHT = sa.select(sa.func.count()).where(tasks.c.tenant == sa.bindparam("tenant"), tasks.c.state.in_(_UNFINISHED))
_IN_FLIGHT_OF_CLASS = _IN_FLIGHT.where(tasks.c.priority == sa.bindparam("priority"))
_QUOTA_LOCK = sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(sa.bindparam("name"))))
_CLAIM_KEYS = InsertIgnoringConflicts(idempotency_keys, [idempotency_keys.c.tenant, idempotency_keys.c.key])
# A task-level idempotency key (a Kafka message's) finds the first task instead of failing or making a second.
_INSERT_NEW_TASKS = InsertIgnoringConflicts(tasks, [tasks.c.id])


@dataclass(frozen=True, kw_only=True)
class RequestKey:
    """The Idempotency-Key of the request that asks for a task (the gateway's; kept for the store's TTL)."""

    key: str
    #: Hash of the request body: the same key with another body is a mismatch.
    fingerprint: str
    #: The response to store as the key's first answer, made from the new task and its step runs; None keeps the
    #: key in flight (the caller completes it later with ``IdempotencyStore.complete``).
    respond: Callable[[Task, list[StepRun]], Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Submission:
    tenant: str
    workflow: str
    input: Any
    #: The workflow version; None for the current one.
    version: str | None = None
    priority: Priority | str = Priority.NORMAL
    #: Overrides the workflow's ``sla.deadline``: an instant, or a duration from now.
    deadline: datetime | timedelta | None = None
    #: Task-level deduplication (at-least-once sources): the same key and input give the first task back.
    idempotency_key: str | None = None
    request: RequestKey | None = None
    annotations: dict[str, Any] | None = None
    callback_url: str | None = None
    submitted_by: str | None = None
    #: W3C traceparent the task's step spans continue.
    trace_context: str | None = None
    #: The region the task's data stays in; narrows its workflow's residency pin (``policies.residency``).
    region: str | None = None
    #: Called with the resolved version and its spec before anything is written; raises to refuse the input.
    validate: Callable[[str, WorkflowSpec], None] | None = None

    def __post_init__(self) -> None:
        if self.request is not None and self.idempotency_key is not None:
            raise ValueError("give a request's Idempotency-Key or a task idempotency key, not both")


@dataclass(frozen=True)
class Accepted:
    """The task of a submission: new, or (``created`` False) the earlier task with its idempotency key."""

    task: Task
    steps: list[StepRun]
    created: bool = True


@dataclass(frozen=True)
class Replayed:
    """The request's Idempotency-Key was answered before: here is that stored response; no task was made."""

    response: Any


Outcome = Accepted | Replayed | Exception


class _RefusedError(Exception):
    """``Submission.validate`` refused the submission with ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class _Plan:
    index: int
    submission: Submission
    task: dict[str, Any]
    entry: Entry
    events: list[dict[str, Any]]
    accepted: Accepted
    #: The Policies that governed the submission (its allow record); None: none did, no record.
    governance: Governance | None = None
    record: dict[str, Any] | None = None
    claim: Claim | None = field(default=None)


class Intake:
    #: Masks task inputs before they are stored or run (``policies.masking``); None when no Policy masks PII.
    pii: WorkflowMasking | None = None
    #: Refuses submissions a Policy denies (tenants, residency), before their input is checked; None: no Policy.
    admission: Admission | None = None
    #: A tenant's quota of unfinished tasks, of all priority classes (None) or one (``policies.quota``; None:
    #: none); None: no Policy sets quotas.
    quota: Callable[[str, str | None], int | None] | None = None
    #: The Policies that govern a workflow, by name: their versions go on each new task's ``task.submitted`` event
    #: (``policies``), for its lineage, and on its ``policy``/``allow`` audit record; None: neither is written.
    governing: Callable[[str], Sequence[Policy]] | None = None

    def __init__(
        self,
        db: Database,
        machine: StateMachine,
        codec: PayloadCodec,
        idempotency: IdempotencyStore,
        clock: Clock,
    ) -> None:
        self.db = db
        self.machine = machine
        self.codec = codec
        self.idempotency = idempotency
        self.clock = clock

    def submit(self, batch: Sequence[Submission]) -> list[Outcome]:
        """One outcome per submission, in order: ``Accepted``, ``Replayed``, or the error that refused it
        (``EngineError``, or whatever ``validate`` raised). Database errors fail the whole batch (raised)."""
        now = self.clock()
        masked: list[MaskSummary | None] = [None] * len(batch)
        if self.pii is not None:  # before the write transaction: detection takes milliseconds per input
            inputs = [self.pii.mask_input(s.tenant, s.workflow, s.input) for s in batch]
            batch = [dataclasses.replace(s, input=i.value) for s, i in zip(batch, inputs, strict=True)]
            masked = [i.summary for i in inputs]
        outcomes: list[Outcome | None] = [None] * len(batch)
        with self.db.write() as conn:
            heads: dict[str, str] = {}
            governed: dict[str, Governance | None] = {}
            plans: list[_Plan] = []
            counted: dict[tuple[str, str | None], int] = {}
            for index, submission in enumerate(batch):
                try:
                    plan = self._plan(conn, index, submission, heads, now, governed=governed)
                    self._check_quota(conn, submission, counted)
                    plans.append(plan)
                except EngineError as exc:
                    outcomes[index] = exc
                except _RefusedError as refused:
                    outcomes[index] = refused.error
            owners = self._claim_keys(conn, plans, outcomes)
            created = self._insert(conn, owners, outcomes)
            self._audit(conn, batch=batch, outcomes=outcomes, created=created, masked=masked, now=now)
        assert all(outcome is not None for outcome in outcomes)
        return [outcome for outcome in outcomes if outcome is not None]

    def _check_quota(self, conn: sa.Connection, sub: Submission, counted: dict[tuple[str, str | None], int]) -> None:
        """Refuse a submission past its tenant's quota of unfinished tasks, of all priority classes or of its own;
        ``counted``: the tenant's counts so far in this batch (its earlier submissions included)."""
        if self.quota is None:
            return
        tenant, priority = sub.tenant, parse_priority(sub.priority).value
        limits = [(None, self.quota(tenant, None)), (priority, self.quota(tenant, priority))]
        checked = [(of, limit) for of, limit in limits if limit is not None]
        if not checked:
            return
        if conn.dialect.name == "postgresql" and not any(key[0] == tenant for key in counted):
            # Gateways admitting for one tenant take turns until commit, so neither counts without the other's
            # new tasks (SQLite's write transactions are serial already).
            conn.execute(_QUOTA_LOCK, {"name": f"aiplane-quota:{tenant}"})
        counts: list[tuple[tuple[str, str | None], int]] = []
        for of, limit in checked:
            key = (tenant, of)
            count = counted.get(key)
            if count is None:
                if of is None:
                    count = conn.execute(_IN_FLIGHT, {"tenant": tenant}).scalar_one()
                else:
                    count = conn.execute(_IN_FLIGHT_OF_CLASS, {"tenant": tenant, "priority": of}).scalar_one()
            if count >= limit:
                policy_metrics.denied("quota")
                what = "unfinished tasks" if of is None else f"unfinished {of}-priority tasks"
                raise QuotaExceededError(
                    f"tenant {tenant!r} has {count} {what}, as many as its Policies' quota allows "
                    f"(maxTasksInFlight {limit}{'' if of is None else f' for priority {of}'}); retry when some "
                    "have finished, or ask for a larger quota",
                    tenant=tenant,
                    limit=limit,
                    **({"priority": of} if of is not None else {}),
                )
            counts.append((key, count))
        for key, count in counts:  # counted only once every quota let it in
            counted[key] = count + 1

    def governance(self, workflow: str) -> Governance | None:
        """The Policies governing ``workflow`` now, as its new tasks' allow records and events name them; None when
        none does (or no policy source is wired): then no allow record is written."""
        if self.governing is None:
            return None
        admission = self.admission
        return Governance.of(
            self.governing(workflow),
            tenants=admission is not None and admission.tenants is not None,
            residency=admission is not None and admission.residency is not None,
        )

    @staticmethod
    def submitted_payload(
        workflow: str, version: str, level: Priority, governance: Governance | None
    ) -> dict[str, Any]:
        """The ``task.submitted`` event's payload; with ``policies``, the versions of the Policies governing the
        workflow now (as the task's allow record names them), for its lineage."""
        payload: dict[str, Any] = {"workflow": workflow, "version": version, "priority": level}
        if governance is not None:
            payload["policies"] = list(governance.policies)
        return payload

    # ---------------------------------------------------------------- 1. decide the rows

    def _plan(
        self,
        conn: sa.Connection,
        index: int,
        sub: Submission,
        heads: dict[str, str],
        now: datetime,
        *,
        governed: dict[str, Governance | None],
    ) -> _Plan:
        level = parse_priority(sub.priority)
        try:
            encoded = self.codec.encode(sub.input)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"task input must be JSON: {exc}", field="input") from exc
        if sub.request is not None:
            check_key(sub.request.key)
        version = sub.version or heads.get(sub.workflow)
        if version is None:
            version = heads[sub.workflow] = definitions.head_version(conn, sub.workflow)
        spec = definitions.load(conn, sub.workflow, version)
        if self.admission is not None:
            if sub.region is not None:
                _check_region(self.admission, sub)
            denial = self.admission.check(sub.tenant, sub.workflow, spec, sub.region)
            if denial is not None:
                raise PolicyDeniedError(denial.detail, reason=denial.reason, policies=denial.policies, **denial.fields)
        if sub.validate is not None:
            try:
                sub.validate(version, spec)
            except Exception as exc:  # the caller's own error type, handed back as the outcome
                raise _RefusedError(exc) from exc
        task: dict[str, Any] = {
            "id": new_id(),
            "tenant": sub.tenant,
            "workflow": sub.workflow,
            "workflow_version": version,
            "priority": level,
            "input": encoded.inline,
            "input_ref": encoded.ref,
            "deadline": _deadline(spec, sub.deadline, now),
            "idempotency_key": sub.idempotency_key,
            "request_hash": request_hash(sub.input) if sub.idempotency_key is not None else None,
            "trace_context": sub.trace_context,
            "annotations": sub.annotations,
            "callback_url": sub.callback_url,
            "submitted_by": sub.submitted_by,
            "request_key": sub.request.key if sub.request is not None else None,
            "region": sub.region,
            **fresh_task_columns(now),
        }
        entry = self.machine.entry(SimpleNamespace(**task), graph.first_step(spec), now)
        task.update(entry.task)
        if sub.workflow in governed:  # asked once per workflow and batch
            governance = governed[sub.workflow]
        else:
            governance = governed[sub.workflow] = self.governance(sub.workflow)
        submitted = outbox.event(
            outbox.TASK_SUBMITTED,
            task_id=task["id"],
            tenant=sub.tenant,
            payload=self.submitted_payload(sub.workflow, version, level, governance),
            now=now,
        )
        # The answer is decided here, before any write: what a read right after the commit would return.
        accepted = Accepted(
            # The input as given rather than decoded back: the same JSON value, without reading a blob again.
            dataclasses.replace(records.task(self.codec, SimpleNamespace(**task), payloads=False), input=sub.input),
            [records.step_run(self.codec, SimpleNamespace(**entry.run))],
        )
        plan = _Plan(index, sub, task, entry, [submitted, *entry.events], accepted, governance)
        if sub.request is not None:
            respond = sub.request.respond
            response = respond(accepted.task, accepted.steps) if respond is not None else None
            plan.record = self.idempotency.record(sub.tenant, sub.request.key, sub.request.fingerprint, now, response)
        return plan

    # ---------------------------------------------------------------- 2. claim the request keys

    def _claim_keys(self, conn: sa.Connection, plans: list[_Plan], outcomes: list[Outcome | None]) -> list[_Plan]:
        """The plans that own their request key (or have none); the others get their outcome now."""
        keyed = [p for p in plans if p.record is not None]
        if not keyed:
            return plans
        first: dict[tuple[str, str], _Plan] = {}
        for plan in keyed:
            assert plan.record is not None
            first.setdefault((plan.record["tenant"], plan.record["key"]), plan)
        # In one order (tenant, key) whatever the batch's: on PostgreSQL a conflicting insert waits for the other
        # transaction's row, so two gateways' batches taking the same keys in opposite orders would deadlock.
        records = sorted((p.record for p in first.values() if p.record is not None), key=_record_name)
        inserted = set(_CLAIM_KEYS.execute(conn, records))
        owners = [p for p in plans if p.record is None]
        for plan in keyed:
            assert plan.record is not None
            name = (plan.record["tenant"], plan.record["key"])
            if name in inserted and first[name] is plan:
                owners.append(plan)
                continue
            # The key was there before, or an earlier request of this batch just took it.
            row = conn.execute(_KEY_ROW, {"_tenant": name[0], "_key": name[1]}).one()
            try:
                claim = self.idempotency.settle(conn, row, plan.record)
            except EngineError as exc:
                outcomes[plan.index] = exc
                continue
            if claim.owner:
                owners.append(plan)
            else:
                outcomes[plan.index] = Replayed(claim.response)
        owners.sort(key=lambda p: p.index)
        return owners

    # ---------------------------------------------------------------- 3. write the tasks

    def _insert(self, conn: sa.Connection, plans: list[_Plan], outcomes: list[Outcome | None]) -> list[_Plan]:
        """Write the tasks; the plans that made a new one."""
        deduplicated = [p for p in plans if p.task["idempotency_key"] is not None]
        created = [p for p in plans if p.task["idempotency_key"] is None]
        if created:
            _INSERT_TASK.executemany(conn, [p.task for p in created])
        if deduplicated:
            # Task keys in one order, as request keys (``_claim_keys``): two sources' batches must not deadlock.
            rows = sorted((p.task for p in deduplicated), key=lambda t: (t["tenant"], t["idempotency_key"]))
            new_ids = {task_id for (task_id,) in _INSERT_NEW_TASKS.execute(conn, rows)}
            for plan in deduplicated:
                if plan.task["id"] in new_ids:
                    created.append(plan)
                else:
                    outcomes[plan.index] = self._earlier_task(conn, plan)
        if not created:
            return created
        _INSERT_RUN.executemany(conn, [p.entry.run for p in created])
        _INSERT_APPROVAL.executemany(conn, [p.entry.approval for p in created if p.entry.approval is not None])
        outbox.insert(conn, [event for p in created for event in p.events])
        for plan in created:
            outcomes[plan.index] = plan.accepted
        return created

    def _audit(
        self,
        conn: sa.Connection,
        *,
        batch: Sequence[Submission],
        outcomes: list[Outcome | None],
        created: list[_Plan],
        masked: list[MaskSummary | None],
        now: datetime,
    ) -> None:
        """The batch's Policy decisions, in its own transaction, appended together:

        - a denial (tenant, residency): kind ``policy``, decision ``deny``, subject ``workflow/<name>/submission``,
          with the reason and its text (which names tenants, steps and regions, never the input) and the Policy
          versions that decided it (``policies``, as masking records and lineage name them);
        - an admission: kind ``policy``, decision ``allow``, subject ``task/<id>``, one per new task of a workflow
          that at least one Policy governs (``Governance.allow_entry``: the Policy versions and the checks passed);
          none when no Policy governs it, so ungoverned intake writes no audit row;
        - a masking: one record per new task whose input was masked (``WorkflowMasking.audit_entry``), so a masked
          input is never stored without the record of what was masked.

        Tasks given back by their idempotency key were recorded when they were made."""
        entries = [
            decisions.Entry(
                "policy",
                f"workflow/{sub.workflow}/submission",
                "deny",
                {
                    "reason": outcome.type,
                    "detail": outcome.detail,
                    "workflow": sub.workflow,
                    "by": sub.submitted_by,
                    "policies": list(outcome.policies),
                },
                tenant=sub.tenant,
                actor="engine",
            )
            for sub, outcome in zip(batch, outcomes, strict=True)
            if isinstance(outcome, PolicyDeniedError)
        ]
        pii = self.pii
        for p in created:
            sub = p.submission
            if p.governance is not None:
                entries.append(
                    p.governance.allow_entry(
                        p.task["id"],
                        tenant=sub.tenant,
                        workflow=sub.workflow,
                        version=p.task["workflow_version"],
                        by=sub.submitted_by,
                    )
                )
            if pii is not None and (summary := masked[p.index]):
                entries.append(
                    pii.audit_entry(sub.tenant, sub.workflow, f"task/{p.task['id']}/input", summary, actor="engine")
                )
        if entries:
            audit.append_many(conn, entries, now=now)

    def _earlier_task(self, conn: sa.Connection, plan: _Plan) -> Outcome:
        task = plan.task
        row = conn.execute(
            sa.select(tasks).where(tasks.c.tenant == task["tenant"], tasks.c.idempotency_key == task["idempotency_key"])
        ).one()
        if row.request_hash != task["request_hash"]:
            return IdempotencyMismatchError(
                "a task was already submitted with this idempotency key and a different input",
                key=task["idempotency_key"],
                task_id=row.id,
            )
        runs = conn.execute(sa.select(step_runs).where(step_runs.c.task_id == row.id).order_by(step_runs.c.seq))
        return Accepted(
            records.task(self.codec, row, payloads=True),
            [records.step_run(self.codec, run) for run in runs],
            created=False,
        )


def _record_name(record: dict[str, Any]) -> tuple[str, str]:
    return record["tenant"], record["key"]


def fresh_task_columns(now: datetime) -> dict[str, Any]:
    """The columns of a task row that every new task starts with, whatever submitted it (this intake or the
    batch intake of Kafka sources): queued, nothing run, nothing finished."""
    return {
        "state": TaskState.QUEUED,
        "result": None,
        "result_ref": None,
        "vars": {},
        "error": None,
        "current_step": None,
        "step_seq": 0,
        "sla_breached_at": None,
        "created_at": now,
        "updated_at": now,
        "finished_at": None,
    }


def _check_region(admission: Admission, sub: Submission) -> None:
    """Refuse (422) a task region that would widen its workflow's residency pin or leave this install's region."""
    assert sub.region is not None
    residency = admission.residency
    refused = residency.region_violation(sub.tenant, sub.workflow, sub.region) if residency is not None else None
    if refused is not None:
        why, allowed = refused
        raise InvalidRequestError(why, field="region", allowed_regions=", ".join(sorted(allowed)))


def _deadline(spec: WorkflowSpec, deadline: datetime | timedelta | None, now: datetime) -> datetime | None:
    if isinstance(deadline, timedelta):
        return now + deadline
    if isinstance(deadline, datetime):
        if deadline.tzinfo is None:
            raise InvalidRequestError("deadline must be timezone-aware (UTC)", field="deadline")
        return deadline
    if spec.sla is not None:
        return now + parse_duration(spec.sla.deadline)
    return None
