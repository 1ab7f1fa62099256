"""``Engine``: the one object the gateway, the CLI and tests talk to.

Every method is synchronous and thread-safe (each call is one or a few short transactions); the gateway calls
them from FastAPI's thread pool. Methods that take a ``tenant`` only ever see that tenant's tasks: another
tenant's id is reported as not found, not as forbidden, so ids do not leak across tenants.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import sqlalchemy as sa
from opentelemetry.trace import Status, StatusCode

from crds.policy import Policy
from crds.workflow import WorkflowSpec
from engine import gauges
from engine.agent.loop import AgentExecutor, AgentRulesFor
from engine.agent.records import Checkpoints
from engine.bus import Bus, InMemoryBus, OutboxRelay
from engine.callbacks import CallbackSender
from engine.clock import Clock, utcnow
from engine.durations import as_duration
from engine.errors import (
    ApprovalNotFoundError,
    EngineError,
    InvalidRequestError,
    SeparationOfDutiesError,
    StepError,
    TaskNotFoundError,
)
from engine.executors.base import StepExecutor
from engine.executors.connector import ConnectorExecutor
from engine.executors.http import HttpCaller
from engine.executors.model import ModelExecutor
from engine.executors.postgres import PostgresClient
from engine.executors.resolvers import (
    ConnectorResolver,
    ModelResolver,
    SecretResolver,
    StaticConnectorResolver,
    StaticModelResolver,
)
from engine.executors.rules import RulesExecutor
from engine.flow import definitions
from engine.models import (
    Approval,
    ApprovalState,
    DeadLetter,
    Decision,
    Event,
    Page,
    Priority,
    StepRun,
    Task,
    TaskState,
)
from engine.payloads import DEFAULT_INLINE_LIMIT, BlobStore, FileBlobStore, PayloadCodec
from engine.resilience import Resilience
from engine.runtime import records
from engine.runtime.bulk import Batch, BatchOutcome, BulkIntake
from engine.runtime.gate import ApprovalGate, RulesFor
from engine.runtime.intake import Accepted, Intake, Outcome, Submission
from engine.runtime.queue import PriorityPolicy
from engine.runtime.transitions import StateMachine
from engine.sinks import InMemorySink, Record, RecordSink
from engine.store import migrate, outbox, purge
from engine.store.audit import AuditLog
from engine.store.blobs import DatabaseBlobStore
from engine.store.database import Database
from engine.store.idempotency import DEFAULT_TTL, IdempotencyStore
from engine.store.payload_logs import PayloadLogStore
from engine.store.purge import Erased, Found, Purged, Retention, SentRecord
from engine.store.schema import approvals, audit_log, dead_letters, step_runs, tasks
from engine.tracing import (
    ATTR_TASK_ID,
    ATTR_TENANT,
    ATTR_WORKFLOW,
    SPAN_SUBMIT,
    TaskSpanStore,
    context_from_traceparent,
    current_traceparent,
    recording,
    tracer,
)
from engine.worker import Worker, WorkerConfig
from policies import lineage
from policies.admission import Admission
from policies.residency import Residency

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from policies.masking import WorkflowMasking
    from policies.model_calls import ModelPolicies
    from policies.payloads import PayloadLog

MAX_PAGE = 500


class Engine:
    def __init__(
        self,
        db_url: str,
        *,
        data_dir: str | Path | None = None,
        blob_store: BlobStore | None = None,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        idempotency_ttl: timedelta = DEFAULT_TTL,
        bus: Bus | None = None,
        model_resolver: ModelResolver | None = None,
        connector_resolver: ConnectorResolver | None = None,
        secret_resolver: SecretResolver | None = None,
        sink: RecordSink | None = None,
        postgres: PostgresClient | None = None,
        priorities: PriorityPolicy | None = None,
        resilience: Resilience | None = None,
        http_client: httpx.Client | None = None,
        clock: Clock = utcnow,
        rng: random.Random | None = None,
        migrate_on_start: bool = True,
        sqlite_synchronous: str = "FULL",
        callbacks_to_private_networks: bool = False,
        residency: Residency | None = None,
        tenants: Callable[[str], frozenset[str] | None] | None = None,
        governing: Callable[[str], Sequence[Policy]] | None = None,
        quota: Callable[[str, str | None], int | None] | None = None,
        pii: WorkflowMasking | None = None,
        payloads: PayloadLog | None = None,
        approval_rules: RulesFor | None = None,
        retention: Retention | None = None,
        agent_rules: AgentRulesFor | None = None,
        model_policies: ModelPolicies | None = None,
    ) -> None:
        """Open the store at ``db_url`` (``sqlite:///path`` or ``postgresql+psycopg://...``) and migrate it.

        Payloads larger than ``inline_limit`` bytes go to ``blob_store`` (default: with SQLite, files under
        ``data_dir/blobs``, ``data_dir`` defaulting to the SQLite file's directory; with PostgreSQL, the store's
        ``blobs`` table, which every gateway, worker and consumer pod shares).
        ``sqlite_synchronous``: see ``engine.store.database.Database``.
        ``callbacks_to_private_networks``: let tasks' callback URLs point at loopback and private addresses
        (refused by default, as for HTTP connectors: a submitter could otherwise make workers call internal
        services).
        ``pii``: masks personal data in task inputs and step outputs before they are stored (``policies.masking``);
        None (no Policy masks PII) costs nothing.
        ``payloads``: logs a sampled share of tasks' step payloads, masked (``policies.payloads``).
        ``approval_rules``: a workflow's effective Policy approval rules by workflow name; a task a rule triggers
        for waits in a ``policy-approval`` step before it succeeds (``engine.runtime.gate``). None: no gate, except
        for tasks whose submitter asked for a human approval (``policy.approval: required``).
        ``retention``: the Policies' retention periods; workers purge expired data every
        ``WorkerConfig.retention_interval`` (``Engine.purge``). None: only tasks' own retention
        (``policy.retention``) is purged.
        ``residency``: the regions each workflow's data may go to (``policies.residency``); model and connector
        steps outside them fail with a ResidencyDenied step error.
        ``model_policies``: the Policies that select Models (``policies.model_calls``): a model step (or an agent's
        model action) whose Model's Policies refuse the task's tenant or keep its data out of the Model's region
        fails with a TenantDenied or ResidencyDenied step error, as the gateway's predict route refuses the call.
        ``agent_rules``: a workflow's effective Policy agentActions rules by workflow name (``policies.agents``);
        agent steps ask them before each action. None: no rule applies.
        ``tenants``: the tenants a workflow's Policies allow (None: any), by workflow name. With ``residency``, a
        submission they deny is refused at intake (``policies.admission``), however it comes in.
        ``governing``: the Policies that govern a workflow, by name: a denial's audit record names the versions of
        those that decided it, and each new task of a workflow they govern gets a ``policy``/``allow`` record
        naming them all (none when no Policy governs it).
        ``quota``: a tenant's quota of unfinished tasks of all priority classes (None) or of one
        (``policies.quota.Quotas.max_in_flight``); a submission past either is refused at intake with
        ``QuotaExceededError`` (429).
        """
        self.residency = residency
        self.model_policies = model_policies
        self.governing = governing
        self.db = Database(db_url, sqlite_synchronous=sqlite_synchronous)
        if migrate_on_start:
            migrate.upgrade(self.db)
        if blob_store is None and not self.db.is_sqlite:
            # Gateways, workers and consumers are separate pods: the store they share holds the blobs too.
            blob_store = DatabaseBlobStore(self.db)
        if blob_store is None:
            if data_dir is None:
                data_dir = Path(self.db.url.database or ".").resolve().parent
            blob_store = FileBlobStore(Path(data_dir) / "blobs")
        self.codec = PayloadCodec(blob_store, inline_limit)
        self.clock = clock
        self.priorities = priorities or PriorityPolicy()
        self.machine = StateMachine(self.codec, self.priorities, rng=rng)
        if approval_rules is not None:
            self.machine.gate = ApprovalGate(approval_rules)
        self.idempotency = IdempotencyStore(self.db, ttl=idempotency_ttl, clock=clock)
        #: The hash-chained audit log of decisions; ``audit.append(kind, subject, decision, details)``.
        self.audit = AuditLog(self.db, clock=clock)
        self.intake = Intake(self.db, self.machine, self.codec, self.idempotency, clock)
        self.bulk = BulkIntake(self.intake)
        self.pii = self.intake.pii = pii
        if residency is not None or tenants is not None:
            self.intake.admission = Admission(tenants, residency, self._connector_region, governing)
        self.intake.quota = quota
        self.intake.governing = governing
        self.payloads = payloads
        #: Sampled payload logs, where retention and erasure reach them (``engine.store.payload_logs``).
        self.payload_logs = PayloadLogStore(self.db, clock)
        if payloads is not None and payloads.keep is None:
            payloads.keep = self.payload_logs.keep
        self.retention = retention
        self.bus: Bus = bus or InMemoryBus()
        self.relay = OutboxRelay(self.db, self.bus, clock=clock)
        self.model_resolver: ModelResolver = model_resolver or StaticModelResolver()
        self.connector_resolver: ConnectorResolver = connector_resolver or StaticConnectorResolver()
        self.secret_resolver = secret_resolver
        self.sink: RecordSink = sink or InMemorySink()
        #: Runs postgres connector steps (``connectors.postgres.PostgresClient``); the caller owns and closes it.
        self.postgres = postgres
        self.http = HttpCaller(http_client, resilience)
        self.callback_sender = CallbackSender(
            self.db, clock, allow_private_networks=callbacks_to_private_networks, rng=rng
        )
        self.rng = rng
        self.agent_rules = agent_rules
        self._workers: list[Worker] = []

    def _connector_region(self, name: str) -> str | None:
        connector = self.connector_resolver.connector(name)
        return connector.region if connector is not None else None

    def close(self) -> None:
        for worker in list(self._workers):
            worker.stop()
        self._workers.clear()
        self.http.close()
        self.callback_sender.close()
        self.db.dispose()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---------------------------------------------------------------- workflows

    def register_workflow(self, name: str, spec: WorkflowSpec | Mapping[str, Any]) -> str:
        """Validate and store a workflow spec; returns its version (a content hash). New tasks use it."""
        parsed = definitions.parse_spec(spec)
        with self.db.write() as conn:
            return definitions.register(conn, name, parsed, self.clock())

    def workflow(self, name: str, version: str | None = None) -> tuple[str, WorkflowSpec]:
        with self.db.read() as conn:
            version = version or definitions.head_version(conn, name)
            return version, definitions.load(conn, name, version)

    # ---------------------------------------------------------------- tasks

    def submit(
        self,
        tenant: str,
        workflow: str,
        input: Any,
        *,
        priority: Priority | str = Priority.NORMAL,
        deadline: datetime | timedelta | None = None,
        idempotency_key: str | None = None,
        version: str | None = None,
        region: str | None = None,
    ) -> Task:
        """Start a task of ``workflow`` (its current version unless ``version`` is given); ``region``: where its
        data stays, within its workflow's residency regions (``policies.residency``).

        ``deadline`` overrides the workflow's ``sla.deadline``. With ``idempotency_key``, submitting the same
        input again returns the first task (and another input with the same key raises
        ``IdempotencyMismatchError``): sources that deliver at least once (Kafka) submit safely.
        """
        submission = Submission(
            tenant=tenant,
            workflow=workflow,
            input=input,
            priority=priority,
            deadline=deadline,
            idempotency_key=idempotency_key,
            version=version,
            region=region,
        )
        [outcome] = self.submit_many([submission])
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, Accepted)
        return outcome.task

    def submit_many(self, submissions: Sequence[Submission]) -> builtins.list[Outcome]:
        """Submit a batch in one transaction; one outcome per submission (see ``engine.runtime.intake``)."""
        if not submissions:
            return []
        traceparent = current_traceparent()
        if traceparent is not None:
            submissions = [
                s if s.trace_context else dataclasses.replace(s, trace_context=traceparent) for s in submissions
            ]
        started = time.time_ns()
        outcomes = self.intake.submit(submissions)
        self._trace_submissions(submissions, outcomes, started, time.time_ns())
        if any(isinstance(o, Accepted) and o.created for o in outcomes):
            self._wake_workers()
        return outcomes

    def submit_batch(self, batch: Batch) -> builtins.list[BatchOutcome]:
        """A source's batch in one transaction (see ``engine.runtime.bulk``): one outcome per input, ``Taken`` or
        the error that refused it."""
        if not batch.inputs:
            return []
        traceparent = current_traceparent()
        if traceparent is not None:
            batch = dataclasses.replace(batch, trace_contexts=[t or traceparent for t in batch.trace_contexts])
        started = time.time_ns()
        outcomes = self.bulk.submit(batch)
        times = (started, time.time_ns())
        for trace_context, outcome in zip(batch.trace_contexts, outcomes, strict=True) if recording() else ():
            task_id, error = (None, outcome) if isinstance(outcome, Exception) else (outcome.task_id, None)
            where = (batch.tenant, batch.workflow, trace_context)
            self._trace_submission(*where, task_id=task_id, error=error, size=len(outcomes), times=times)
        if any(not isinstance(o, Exception) and o.created for o in outcomes):
            self._wake_workers()
        return outcomes

    def _trace_submissions(
        self, submissions: Sequence[Submission], outcomes: Sequence[Outcome], started: int, ended: int
    ) -> None:
        """One ``aiplane.engine.submit`` span per submission, in its own request's trace, spanning the batch's
        transaction (a batch serves many requests, so one span could sit in only one of their traces)."""
        for submission, outcome in zip(submissions, outcomes, strict=True):
            task_id = outcome.task.id if isinstance(outcome, Accepted) else None
            error = outcome if isinstance(outcome, Exception) else None
            where = (submission.tenant, submission.workflow, submission.trace_context)
            self._trace_submission(*where, task_id=task_id, error=error, size=len(submissions), times=(started, ended))

    def _trace_submission(
        self,
        tenant: str,
        workflow: str,
        trace_context: str | None,
        *,
        task_id: str | None,
        error: Exception | None,
        size: int,
        times: tuple[int, int],
    ) -> None:
        attributes: dict[str, str | int] = {ATTR_TENANT: tenant, ATTR_WORKFLOW: workflow, "aiplane.batch.size": size}
        if task_id is not None:
            attributes[ATTR_TASK_ID] = task_id
        span = tracer().start_span(
            SPAN_SUBMIT, context=context_from_traceparent(trace_context), attributes=attributes, start_time=times[0]
        )
        if error is not None:
            text = str(error)  # an input check's message may quote the input: masked like the input
            if self.pii is not None:
                text = self.pii.text(tenant, workflow, text)
            span.set_status(Status(StatusCode.ERROR, text))
        span.end(end_time=times[1])

    def get(self, tenant: str, task_id: str) -> Task:
        with self.db.read() as conn:
            row = conn.execute(sa.select(tasks).where(tasks.c.id == task_id, tasks.c.tenant == tenant)).first()
        if row is None:
            raise TaskNotFoundError(f"no task {task_id!r}", task_id=task_id)
        return records.task(self.codec, row, payloads=True)

    def list(
        self,
        tenant: str,
        *,
        state: TaskState | str | None = None,
        workflow: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        include_payloads: bool = False,
    ) -> Page[Task]:
        """Tasks of ``tenant``, newest first. ``cursor`` is the ``next_cursor`` of the previous page."""
        limit = _page_limit(limit)
        query = sa.select(tasks).where(tasks.c.tenant == tenant).order_by(tasks.c.id.desc()).limit(limit + 1)
        if state is not None:
            query = query.where(tasks.c.state == _enum(TaskState, state, "state"))
        if workflow is not None:
            query = query.where(tasks.c.workflow == workflow)
        if cursor is not None:
            query = query.where(tasks.c.id < cursor)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        items = [records.task(self.codec, row, payloads=include_payloads) for row in rows[:limit]]
        return Page(items, items[-1].id if len(rows) > limit else None)

    def steps(self, tenant: str, task_id: str) -> builtins.list[StepRun]:
        """The task's step runs in the order they were entered."""
        self._check_task(tenant, task_id)
        with self.db.read() as conn:
            rows = conn.execute(sa.select(step_runs).where(step_runs.c.task_id == task_id).order_by(step_runs.c.seq))
            return [records.step_run(self.codec, row) for row in rows]

    def cancel(self, tenant: str, task_id: str, reason: str = "cancelled") -> Task:
        with self.db.write() as conn:
            self.machine.cancel(conn, tenant=tenant, task_id=task_id, reason=reason, now=self.clock())
        return self.get(tenant, task_id)

    def replay(self, tenant: str, task_id: str) -> Task:
        """Resume a dead-lettered task at its failed step; completed steps are not run again."""
        with self.db.write() as conn:
            self.machine.replay(conn, tenant=tenant, task_id=task_id, now=self.clock())
        self._wake_workers()
        return self.get(tenant, task_id)

    def wait(self, tenant: str, task_id: str, timeout: float, *, poll_interval: float = 0.05) -> Task:
        """Poll until the task is done or ``timeout`` seconds pass; returns the task either way (check ``done``).

        For the gateway's synchronous mode. Polls the store rather than listening on the bus so it works the
        same whether the worker runs in this process or elsewhere.
        """
        deadline = time.monotonic() + timeout
        while True:
            task = self.get(tenant, task_id)
            if task.done or time.monotonic() >= deadline:
                return task
            time.sleep(min(poll_interval, max(deadline - time.monotonic(), 0)))

    # ---------------------------------------------------------------- approvals

    def approvals(
        self,
        tenant: str,
        state: ApprovalState | str | None = ApprovalState.PENDING,
        *,
        task_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Approval]:
        """Approvals of ``tenant`` (pending by default; ``state=None`` for all), oldest first."""
        limit = _page_limit(limit)
        query = sa.select(approvals).where(approvals.c.tenant == tenant).order_by(approvals.c.id).limit(limit + 1)
        if state is not None:
            query = query.where(approvals.c.state == _enum(ApprovalState, state, "state"))
        if task_id is not None:
            query = query.where(approvals.c.task_id == task_id)
        if cursor is not None:
            query = query.where(approvals.c.id > cursor)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        items = [_approval(row) for row in rows[:limit]]
        return Page(items, items[-1].id if len(rows) > limit else None)

    def approval(self, approval_id: str, *, tenant: str | None = None) -> Approval:
        with self.db.read() as conn:
            row = conn.execute(sa.select(approvals).where(approvals.c.id == approval_id)).first()
        if row is None or (tenant is not None and row.tenant != tenant):
            raise ApprovalNotFoundError(f"no approval {approval_id!r}", approval_id=approval_id)
        return _approval(row)

    def approve(
        self,
        approval_id: str,
        approver: str,
        reason: str = "",
        *,
        tenant: str | None = None,
        roles: frozenset[str] | set[str] | None = None,
    ) -> Approval:
        """Record an approval; at quorum the task continues with the next step.

        ``roles``: the approver's roles as the gateway authenticated them, checked against the step's
        approvers (None: trust the caller). ``tenant`` scopes the lookup to that tenant.
        """
        return self._decide(approval_id, approver, reason, approve=True, tenant=tenant, roles=roles)

    def reject(
        self,
        approval_id: str,
        approver: str,
        reason: str,
        *,
        tenant: str | None = None,
        roles: frozenset[str] | set[str] | None = None,
    ) -> Approval:
        """Reject: the task continues at the step's ``onReject``, or ends as rejected with ``reason``."""
        return self._decide(approval_id, approver, reason, approve=False, tenant=tenant, roles=roles)

    def _decide(
        self,
        approval_id: str,
        approver: str,
        reason: str,
        *,
        approve: bool,
        tenant: str | None,
        roles: frozenset[str] | set[str] | None,
    ) -> Approval:
        try:
            with self.db.write() as conn:
                if approve:
                    self._check_separation(conn, approval_id, approver, tenant)
                self.machine.decide(
                    conn,
                    approval_id=approval_id,
                    approver=approver,
                    approve=approve,
                    reason=reason,
                    roles=frozenset(roles) if roles is not None else None,
                    tenant=tenant,
                    now=self.clock(),
                )
        except SeparationOfDutiesError as refused:
            # The decision's transaction was rolled back; the refusal is a decision of its own.
            self.audit.append(
                "policy",
                f"task/{refused.fields['task_id']}",
                "deny",
                {
                    "reason": refused.type,
                    "detail": refused.detail,
                    "approval": approval_id,
                    "step": refused.fields["step"],
                },
                tenant=refused.fields["tenant"],
                actor=approver,
            )
            raise
        self._wake_workers()
        return self.approval(approval_id)

    def _check_separation(self, conn: sa.Connection, approval_id: str, approver: str, tenant: str | None) -> None:
        """Refuse ``approver`` approving a task they submitted when its approval step asks for separation of
        duties (``separationOfDuties``; a Model promotion's, when the Policies say so). Other checks are
        ``StateMachine.decide``'s."""
        row = conn.execute(
            sa.select(approvals.c.step, tasks.c.id, tasks.c.tenant, tasks.c.workflow, tasks.c.workflow_version)
            .add_columns(tasks.c.submitted_by)
            .join(tasks, tasks.c.id == approvals.c.task_id)
            .where(approvals.c.id == approval_id)
        ).first()
        if row is None or (tenant is not None and row.tenant != tenant) or row.submitted_by != approver:
            return  # not found is decide's to say; someone else's task is no concern here
        spec = definitions.load(conn, row.workflow, row.workflow_version)
        step = next((s for s in spec.steps if s.name == row.step), None)
        if step is not None and step.approval is not None and step.approval.separation_of_duties:
            raise SeparationOfDutiesError(
                f"{approver!r} requested what this approval decides (they submitted task {row.id}) and may not "
                "approve it (separation of duties); another approver must",
                task_id=row.id,
                tenant=row.tenant,
                step=row.step,
            )

    # ---------------------------------------------------------------- events, dead letters, idempotency

    def events(
        self, task_id: str, *, tenant: str | None = None, after_seq: int = 0, limit: int = 1000
    ) -> builtins.list[Event]:
        """The task's outbox events in order; pass the last ``seq`` seen as ``after_seq`` to follow along."""
        if tenant is not None:
            self._check_task(tenant, task_id)
        with self.db.read() as conn:
            return outbox.for_task(conn, task_id, after_seq=after_seq, limit=limit)

    def dead_letters(
        self, tenant: str, *, include_replayed: bool = False, limit: int = 50, cursor: str | None = None
    ) -> Page[DeadLetter]:
        limit = _page_limit(limit)
        query = (
            sa.select(dead_letters)
            .where(dead_letters.c.tenant == tenant)
            .order_by(dead_letters.c.id.desc())
            .limit(limit + 1)
        )
        if not include_replayed:
            query = query.where(dead_letters.c.replayed_at.is_(None))
        if cursor is not None:
            query = query.where(dead_letters.c.id < cursor)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        items = [
            DeadLetter(
                id=r.id,
                task_id=r.task_id,
                tenant=r.tenant,
                step=r.step,
                reason=r.reason,
                last_error=r.last_error,
                created_at=r.created_at,
                replayed_at=r.replayed_at,
            )
            for r in rows[:limit]
        ]
        return Page(items, items[-1].id if len(rows) > limit else None)

    # ---------------------------------------------------------------- workers

    def executors(self) -> dict[str, StepExecutor]:
        """The step executors a worker of this engine uses, by step type."""
        # Without residency Policies a task may still carry a region of its own: its calls are checked against it.
        residency = self.residency or Residency()
        model = ModelExecutor(
            self.model_resolver, self.http, self.rng, residency=residency, model_policies=self.model_policies
        )
        connector = ConnectorExecutor(
            self.connector_resolver,
            self.http,
            self.secret_resolver,
            self.sink,
            postgres=self.postgres,
            residency=residency,
        )
        agent = AgentExecutor(
            Checkpoints(self.db, self.codec),
            models=self.model_resolver,
            connectors=self.connector_resolver,
            http=self.http,
            model=model,
            connector=connector,
            children=_ChildTasks(self),
            rules_for=self.agent_rules,
            residency=residency,
            clock=self.clock,
            rng=self.rng,
            pii=self.pii,
            check_model=model.check_model_policies if self.model_policies is not None else None,
        )
        return {"model": model, "connector": connector, "rules": RulesExecutor(), "agent": agent}

    def worker(self, config: WorkerConfig | None = None, **overrides: Any) -> Worker:
        """A worker on this engine's store (not started: ``start()`` it, or use it as a context manager).

        Keyword arguments override ``WorkerConfig`` fields, e.g. ``engine.worker(concurrency=8, lease=...)``.
        """
        if overrides:
            if "lease" in overrides:
                overrides["lease"] = as_duration(overrides["lease"])
            config = dataclasses.replace(config or WorkerConfig(), **overrides)
        worker = Worker(
            self.db,
            self.machine,
            self.codec,
            self.executors(),
            config=config,
            relay=self.relay,
            callbacks=self.callback_sender,
            clock=self.clock,
        )
        worker.pii = self.pii
        worker.governing = self.governing
        worker.payloads = self.payloads
        # Always: a task's own retention (its policy.retention annotation) applies without any Policy.
        worker.retention = self.purge
        self._workers.append(worker)
        return worker

    def refresh_gauges(self) -> None:
        """Set the store gauges (queue length per priority, pending approvals, DLQ size) from the store now."""
        gauges.refresh(self.db)

    def maintain(self) -> None:
        """Run the periodic sweeps once (approval expiry, SLA breaches, outbox relay) without a worker."""
        Worker(
            self.db, self.machine, self.codec, {}, relay=self.relay, callbacks=self.callback_sender, clock=self.clock
        ).maintain()

    def lineage(self, tenant: str, task_id: str) -> dict[str, Any]:
        """What produced the task's result: workflow version, input hash, Policy versions (those governing the
        workflow at intake, and those named by the audit records of the task, its input and its steps), a decision
        record per step (``policies.lineage``)."""
        task = self.get(tenant, task_id)
        steps = self.steps(tenant, task_id)
        events = self.events(task_id)
        completions = [e.payload for e in events if e.type == outbox.STEP_COMPLETED]
        subject = f"task/{task_id}"
        with self.db.read() as conn:
            # Every decision about the task and what it produced (approval rules, residency at run time, masking
            # of its input and step outputs); a read of it later (detokenize) did not produce the result.
            details = conn.execute(
                sa.select(audit_log.c.details).where(
                    sa.or_(audit_log.c.subject == subject, audit_log.c.subject.startswith(subject + "/")),
                    audit_log.c.subject != subject + "/detokenize",
                )
            ).scalars()
            policies = [p for text in details for p in json.loads(text).get("policies", [])]
        # The Policies governing the workflow when the task came in, allowing decisions included.
        policies += [p for e in events if e.type == outbox.TASK_SUBMITTED for p in e.payload.get("policies", [])]
        return lineage.record(
            task_id=task.id,
            workflow=task.workflow,
            workflow_version=task.workflow_version,
            input=task.input,
            steps=[
                {"name": s.name, "type": s.type, "seq": s.seq, "state": str(s.state), "output": s.output} for s in steps
            ],
            completions=completions,
            policies=policies,
            region=task.region,
        )

    def agent_decisions(self, tenant: str, task_id: str) -> builtins.list[dict[str, Any]]:
        """The decision records of the task's agent steps: each planner proposal, the decision about it (with the
        reason and Policies), and what its action did (``engine.agent.records``)."""
        self._check_task(tenant, task_id)
        return [
            {"stepName": step, **record.as_json(), "createdAt": record.created_at, "finishedAt": record.finished_at}
            for step, record in Checkpoints(self.db, self.codec).of_task(task_id)
        ]

    # ---------------------------------------------------------------- retention and erasure

    def purge(self) -> Purged:
        """Delete what the retention periods say is expired now (``engine.store.purge.purge``)."""
        if self.retention is None:  # no Policy sets a period: only tasks' own retention applies
            return purge.purge_own_retention(self.db, self.codec, now=self.clock())
        purged = purge.purge(
            self.db,
            self.codec,
            self.retention.periods,
            now=self.clock(),
            audit_period=self.retention.audit(),
            audit_log=self.audit,
            model_retention_for=self.retention.models,
        )
        if self.retention.after is not None:
            self.retention.after(purged)
        return purged

    def erase(
        self,
        subject: str,
        *,
        fields: Sequence[str] = (),
        actor: str,
        tenant: str | None = None,
        spans: TaskSpanStore | None = None,
    ) -> Erased:
        """Remove every task of a data subject (in ``tenant`` only, when given) and audit it
        (``engine.store.purge.erase``); ``spans``: the span store of ``GET /v1/tasks/{id}/trace`` to forget the
        tasks' spans in. Beyond the store: each kafkaSink record the tasks published gets a tombstone (its key, no
        value), and ``Erased.beyond["remaining"]`` says where copies stay until their own retention."""
        return purge.erase(
            self.db,
            self.codec,
            subject,
            fields=fields,
            actor=actor,
            now=self.clock(),
            tenant=tenant,
            beyond=lambda found: self._erase_beyond(found, spans),
        )

    def _erase_beyond(self, found: Found, spans: TaskSpanStore | None) -> dict[str, Any]:
        """Forget the erased tasks' spans, tombstone their sink records' keys, and report (by place and count,
        never by key or value) what stays outside the store."""
        report: dict[str, Any] = {}
        remaining: list[dict[str, Any]] = []
        if spans is not None:
            report["spans"] = spans.forget(found.tasks)
            if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
                remaining.append({"place": "tracing-backend", "tasks": len(found.tasks), "until": "its retention"})
        periods = self.retention.periods if self.retention is not None else None
        remaining.extend(
            purge.remaining(
                found,
                tombstone=self._tombstone,
                results_period=(lambda workflow: periods(workflow).get("results")) if periods is not None else None,
            )
        )
        report["remaining"] = remaining
        return report

    def _tombstone(self, sent: SentRecord) -> bool:
        """Publish a tombstone for a sink record's key through the sink that sent it; False if it could not."""
        try:
            with self.db.read() as conn:
                spec = definitions.load(conn, sent.workflow, sent.version)
            step = next((s for s in spec.steps if s.name == sent.step), None)
            connector = step.connector.name if step is not None and step.connector is not None else None
            if sent.action is not None and step is not None and step.agent is not None:  # an agent's action
                action = next((a for a in step.agent.actions if a.name == sent.action), None)
                connector = action.connector.name if action is not None and action.connector is not None else None
            self.sink.send(Record(topic=sent.topic, key=sent.key, value=None, tombstone=True, connector=connector))
        except Exception:  # the broker down, a Connector gone: reported as records without a tombstone
            log.warning("erasure: no tombstone for a record on topic %s", sent.topic, exc_info=True)
            return False
        return True

    def _wake_workers(self) -> None:
        for worker in self._workers:
            worker.wake()

    # ---------------------------------------------------------------- views

    def _check_task(self, tenant: str, task_id: str) -> None:
        with self.db.read() as conn:
            found = conn.execute(sa.select(tasks.c.id).where(tasks.c.id == task_id, tasks.c.tenant == tenant)).first()
        if found is None:
            raise TaskNotFoundError(f"no task {task_id!r}", task_id=task_id)


class _ChildTasks:
    """An agent's workflow actions as child tasks of this engine (``engine.agent.loop.ChildTasks``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(
        self, *, tenant: str, workflow: str, version: str | None, input: Any, key: str, trace_context: str | None
    ) -> str:
        submission = Submission(
            tenant=tenant,
            workflow=workflow,
            input=input,
            version=version,
            idempotency_key=key,
            trace_context=trace_context,
        )
        [outcome] = self.engine.submit_many([submission])
        if isinstance(outcome, EngineError):
            # The child cannot start as asked (unknown workflow, another input under the key): the action failed.
            raise StepError(type(outcome).__name__, outcome.detail, retryable=False)
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, Accepted)
        return outcome.task.id

    def outcome(self, tenant: str, task_id: str) -> tuple[str, Any, Mapping[str, Any] | None]:
        task = self.engine.get(tenant, task_id)
        return str(task.state), task.result, task.error


def _approval(row: sa.Row[Any]) -> Approval:
    return Approval(
        id=row.id,
        task_id=row.task_id,
        tenant=row.tenant,
        step=row.step,
        state=ApprovalState(row.state),
        roles=list(row.roles),
        users=list(row.users),
        quorum=row.quorum,
        prompt=row.prompt,
        decisions=[
            Decision(
                approver=d["approver"], decision=d["decision"], reason=d["reason"], at=datetime.fromisoformat(d["at"])
            )
            for d in row.decisions
        ],
        expires_at=row.expires_at,
        created_at=row.created_at,
        decided_at=row.decided_at,
    )


E = TypeVar("E", bound=StrEnum)


def _enum(kind: type[E], value: str, field: str) -> E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise InvalidRequestError(f"unknown {field} {value!r}; use one of {allowed}", field=field) from None


def _page_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequestError(f"limit must be between 1 and {MAX_PAGE}", field="limit")
    return limit
