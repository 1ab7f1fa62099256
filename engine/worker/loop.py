"""The worker: claim steps with leases, run them on a thread pool, heartbeat, report; run the sweeps.

Threads, not asyncio: the store is reached through blocking drivers (sqlite3, psycopg) and the executors make
blocking HTTP calls with timeouts, so a small pool of threads per process is the simplest model that keeps
heartbeats independent of slow steps; a worker process is scaled out by running more of them. The gateway
(FastAPI) can host workers in-process the same way.

A worker holds a step only while running it: the lease is extended every ``lease / 3``; if the process dies
the lease runs out and any other worker claims the step again (with the same idempotency key). Approvals never
reach a worker at all.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

import sqlalchemy as sa
from opentelemetry.trace import Status, StatusCode

from engine import gauges, metrics
from engine.bus import OutboxRelay
from engine.callbacks import CallbackSender
from engine.clock import Clock, new_id, utcnow
from engine.durations import parse_duration
from engine.errors import StepDeferredError, StepError
from engine.executors.base import StepContext, StepExecutor, StepOutcome
from engine.flow import definitions, graph
from engine.payloads import PayloadCodec
from engine.runtime.context import TaskData, load_task_data
from engine.runtime.transitions import Chain, Claimed, Completed, FailResult, StateMachine
from engine.store import audit
from engine.store.database import Database
from engine.store.schema import idempotency_keys
from engine.store.types import dumps
from engine.tracing import (
    ATTR_ATTEMPT,
    ATTR_STEP,
    ATTR_STEP_TYPE,
    ATTR_TASK_ID,
    ATTR_TENANT,
    ATTR_WORKFLOW,
    SPAN_STEP,
    context_from_traceparent,
    tracer,
)
from policies.audit import Entry as AuditEntry
from policies.effective import ref
from policies.model_calls import TENANT_DENIED as MODEL_TENANT_DENIED
from policies.residency import DENIED as RESIDENCY_DENIED

if TYPE_CHECKING:
    from crds.policy import Policy
    from policies.audit import Entry
    from policies.masking import WorkflowMasking
    from policies.payloads import PayloadLog

log = logging.getLogger(__name__)

INTERNAL_ERROR = "InternalError"
T = TypeVar("T")


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{new_id()[-6:]}"


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str = field(default_factory=default_worker_id)
    #: Steps run at once by this worker (threads).
    concurrency: int = 4
    #: How long a claim lasts without a heartbeat; a dead worker's steps are retried after this.
    lease: timedelta = timedelta(seconds=30)
    #: Seconds between claim attempts when idle (an in-process submit wakes the worker at once).
    poll_interval: float = 0.5
    #: Seconds between maintenance rounds: approval expiry, SLA breaches, outbox relay.
    maintenance_interval: float = 1.0
    #: Seconds between refreshes of the store gauges (queue length, pending approvals, DLQ size).
    gauges_interval: float = 15.0
    #: Run the maintenance sweeps in this worker (every worker may; the sweeps are safe to run concurrently).
    maintenance: bool = True
    #: Seconds between retention purges (``engine.store.purge``: the Policies' periods and tasks' own): periods
    #: are days, so a purge every ten minutes deletes expired data promptly without scanning the store often.
    retention_interval: float = 600.0
    #: Take a task's next step along with the completion of its current one when nothing is queued ahead of it
    #: (one transaction per step instead of two; see ``engine.runtime.transitions.Chain``).
    chain_steps: bool = True

    @property
    def heartbeat_interval(self) -> float:
        return self.lease.total_seconds() / 3


class Worker:
    #: Masks step outputs and error messages before they are stored or traced (``policies.masking``); None when no
    #: Policy masks PII.
    pii: WorkflowMasking | None = None
    #: Logs a sampled share of tasks' step payloads, after masking (``policies.payloads``); None: no payload logs.
    payloads: PayloadLog | None = None
    #: Runs one retention purge (``Engine.purge``, which an engine's workers always get); None: no purge.
    retention: Callable[[], object] | None = None
    #: The Policies that govern a workflow, by name: a call refused for residency is audited naming those whose
    #: residency decided it. None: the record names none.
    governing: Callable[[str], Sequence[Policy]] | None = None

    def __init__(
        self,
        db: Database,
        machine: StateMachine,
        codec: PayloadCodec,
        executors: Mapping[str, StepExecutor],
        *,
        config: WorkerConfig | None = None,
        relay: OutboxRelay | None = None,
        callbacks: CallbackSender | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.machine = machine
        self.codec = codec
        self.executors = dict(executors)
        self.config = config or WorkerConfig()
        self.relay = relay
        self.callbacks = callbacks
        self.clock = clock
        self._inflight: dict[str, Claimed] = {}
        self._inflight_lock = threading.Lock()
        # Steps whose result is being written: a failed heartbeat for them is expected, not a lost lease.
        self._reporting: set[str] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None
        self._last_gauges = float("-inf")
        self._last_purge = float("-inf")
        self._last_retention = float("-inf")
        self._chain = (
            Chain(self.config.worker_id, self.config.lease, frozenset(self.executors))
            if self.config.chain_steps
            else None
        )

    @property
    def id(self) -> str:
        return self.config.worker_id

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Worker:
        if self._threads:
            return self
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self.config.concurrency, thread_name_prefix=f"step-{self.id}")
        loops: list[tuple[str, Callable[[], None]]] = [("claim", self._claim_loop), ("heartbeat", self._heartbeat_loop)]
        if self.config.maintenance:
            loops.append(("maintenance", self._maintenance_loop))
        for name, target in loops:
            thread = threading.Thread(target=target, name=f"{name}-{self.id}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, let running steps finish (up to ``timeout``), then stop the other loops."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._threads.clear()
        self._pool = None

    def stop_soon(self) -> None:
        """Ask ``run_forever`` to return (safe from a signal handler: it only sets an event)."""
        self._stop.set()
        self._wake.set()

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()

    def wake(self) -> None:
        """Claim now instead of at the next poll (called on in-process submits and decisions)."""
        self._wake.set()

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- claiming and running

    def _free_slots(self) -> int:
        with self._inflight_lock:
            return self.config.concurrency - len(self._inflight)

    def _claim_loop(self) -> None:
        while not self._stop.is_set():
            claimed: list[Claimed] = []
            free = self._free_slots()
            if free > 0:
                try:
                    claimed = self.claim(free)
                except Exception:
                    log.exception("worker %s: claiming failed; retrying", self.id)
            for item in claimed:
                with self._inflight_lock:
                    self._inflight[item.step_run_id] = item
                assert self._pool is not None
                self._pool.submit(self._run_tracked, item)
            if not claimed or free <= len(claimed):
                # Idle, or full: wait for a poll tick, a submit, or a finished step freeing a slot.
                self._wake.wait(self.config.poll_interval)
                self._wake.clear()

    def claim(self, limit: int) -> list[Claimed]:
        now = self.clock()
        if self.db.is_sqlite and not self._work_due(now):
            return []
        with self.db.write() as conn:
            return self.machine.claim(conn, worker=self.id, limit=limit, lease=self.config.lease, now=now)

    def _work_due(self, now: datetime) -> bool:
        with self.db.read() as conn:
            return self.machine.work_due(conn, now)

    def _run_tracked(self, claimed: Claimed) -> None:
        current: Claimed | None = claimed
        data: TaskData | None = None
        try:
            while current is not None:
                chained = self.run_step(current, data)
                with self._inflight_lock:
                    self._inflight.pop(current.step_run_id, None)
                    self._reporting.discard(current.step_run_id)
                    if chained is not None:
                        self._inflight[chained[0].step_run_id] = chained[0]
                current, data = chained if chained is not None else (None, None)
        except Exception:
            # Reporting failed even after retries: the lease will expire and the step will run again elsewhere.
            assert current is not None
            log.exception("worker %s: step %s of task %s could not be reported", self.id, current.step, current.task_id)
        finally:
            if current is not None:
                with self._inflight_lock:
                    self._inflight.pop(current.step_run_id, None)
                    self._reporting.discard(current.step_run_id)
            self._wake.set()

    def run_step(self, claimed: Claimed, data: TaskData | None = None) -> tuple[Claimed, TaskData] | None:
        """Run one claimed attempt and record its result (also usable directly, without the threads).

        Returns the task's next step when the store leased it to this worker along with the completion (see
        ``Chain``), with the task data it sees (``data`` for that call: no need to read it back).
        """
        started = time.monotonic()
        ctx = self._context(claimed, data)
        attributes: dict[str, str | int] = {
            ATTR_TASK_ID: claimed.task_id,
            ATTR_TENANT: claimed.tenant,
            ATTR_WORKFLOW: claimed.workflow,
            ATTR_STEP: claimed.step,
            ATTR_STEP_TYPE: claimed.step_type,
            ATTR_ATTEMPT: claimed.attempt,
        }
        parent = context_from_traceparent(claimed.trace_context)
        with tracer().start_as_current_span(SPAN_STEP, context=parent, attributes=attributes) as span:
            result = self._execute(ctx)
            masking = None
            if self.pii is not None:
                result, masking = _masked(self.pii, claimed, result)
            if self.payloads is not None and isinstance(result, StepOutcome):
                self.payloads.step(
                    tenant=claimed.tenant,
                    workflow=claimed.workflow,
                    task_id=claimed.task_id,
                    step=claimed.step,
                    input=ctx.input,
                    output=result.output,
                    # A model step's Model: Policies selecting it sample and mask its calls too.
                    model=(result.lineage or {}).get("model") if claimed.step_type == "model" else None,
                )
            if isinstance(result, StepError):
                span.set_status(Status(StatusCode.ERROR, str(result)))
                span.set_attribute("error.type", result.kind)
        with self._inflight_lock:
            self._reporting.add(claimed.step_run_id)  # cleared with the in-flight entry, in _run_tracked
        label, chained = self._report(claimed, result, masking, _allowed(claimed, ctx))
        if label == "lease_lost":
            log.warning(
                "worker %s lost the lease of step %s of task %s; its result was discarded",
                self.id,
                claimed.step,
                claimed.task_id,
            )
        metrics.STEP_DURATION.labels(claimed.workflow, claimed.step, claimed.step_type, label).observe(
            time.monotonic() - started
        )
        if chained is None or not isinstance(result, StepOutcome):
            return None
        # What the store now holds for the task, as a read would give it back (JSON round trip included).
        carried = TaskData(
            input=ctx.input,
            steps={**ctx.steps, claimed.step: json.loads(dumps(result.output))},
            vars={**ctx.vars, **json.loads(dumps(dict(result.vars)))},
        )
        return chained, carried

    def _context(self, claimed: Claimed, data: TaskData | None = None) -> StepContext:
        spec = definitions.cached(claimed.workflow, claimed.workflow_version)
        if spec is None or data is None:
            with self.db.read() as conn:
                spec = definitions.load(conn, claimed.workflow, claimed.workflow_version)
                data = data or load_task_data(conn, self.codec, claimed.task_id)
        step = graph.step_named(spec, claimed.step)
        return StepContext(
            task_id=claimed.task_id,
            tenant=claimed.tenant,
            workflow=claimed.workflow,
            workflow_version=claimed.workflow_version,
            step=step,
            attempt=claimed.attempt,
            idempotency_key=claimed.idempotency_key,
            input=data.input,
            steps=data.steps,
            vars=data.vars,
            timeout=parse_duration(step.timeout).total_seconds(),
            deadline=claimed.deadline,
            step_run_id=claimed.step_run_id,
            lease_token=claimed.lease_token,
            trace_context=claimed.trace_context,
            region=claimed.region,
        )

    def _execute(self, ctx: StepContext) -> StepOutcome | StepError | StepDeferredError:
        executor = self.executors.get(ctx.step.type)
        if executor is None:
            return StepError("NotConfigured", f"this worker cannot run {ctx.step.type} steps", retryable=True)
        try:
            return executor.execute(ctx)
        except (StepError, StepDeferredError) as exc:
            return exc
        except Exception as exc:
            # An executor bug: retried (it may be transient) and, if it persists, dead-lettered with the text.
            if self.pii is None:
                log.exception("executor for step %s of task %s crashed", ctx.step.name, ctx.task_id)
            else:  # the exception's text may quote the payload: the frames, and the text masked
                log.error(
                    "executor for step %s of task %s crashed: %s\n%s",
                    ctx.step.name,
                    ctx.task_id,
                    self.pii.text(ctx.tenant, ctx.workflow, f"{type(exc).__name__}: {exc}"),
                    "".join(traceback.format_tb(exc.__traceback__)),
                )
            return StepError(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", retryable=True)

    def _report(
        self,
        claimed: Claimed,
        result: StepOutcome | StepError | StepDeferredError,
        masking: Entry | None = None,
        allowed: Sequence[Entry] = (),
    ) -> tuple[str, Claimed | None]:
        """Record the attempt's result: the outcome label for the duration histogram, and the chained next step.
        ``masking``: the audit record of what was masked in the output, kept with it in one transaction;
        ``allowed``: the records of the calls Policies allowed and it made (``_allowed``), kept with whatever
        ends the attempt (an agent step that waits for a child task may have called models before)."""
        if isinstance(result, StepOutcome):
            chain = None if self._stop.is_set() else self._chain
            records = [*allowed, *([masking] if masking is not None else [])]

            def complete(conn: sa.Connection) -> Completed | None:
                now = self.clock()
                completed = self.machine.complete(conn, claimed, result, now, chain=chain)
                if completed is not None and records:
                    audit.append_many(conn, records, now=now)
                return completed

            done = self._write(complete)
            if done is None:
                return "lease_lost", None
            return "succeeded", done.next
        if isinstance(result, StepDeferredError):

            def defer(conn: sa.Connection) -> bool:
                now = self.clock()
                released = self.machine.defer(conn, claimed, result, now)
                if released and allowed:
                    audit.append_many(conn, allowed, now=now)
                return released

            self._write(defer)
            metrics.DEFERRALS.labels(claimed.workflow, claimed.step).inc()
            return "deferred", None
        denial = self._policy_denial(claimed, result)

        def fail(conn: sa.Connection) -> FailResult | None:
            now = self.clock()
            failed = self.machine.fail(conn, claimed, result, now)
            if failed is not None and (denial is not None or allowed):
                # With the failure, in its transaction; an allowed call that then failed still sent its data.
                audit.append_many(conn, [*allowed, *([denial] if denial is not None else [])], now=now)
            return failed

        failed = self._write(fail)
        if failed is None:
            return "lease_lost", None
        if failed.retrying:
            metrics.RETRIES.labels(claimed.workflow, claimed.step).inc()
            return "retrying", None
        metrics.DEAD_LETTERS.labels(claimed.workflow).inc()
        return "failed", None

    def _policy_denial(self, claimed: Claimed, result: StepError) -> Entry | None:
        """The audit record of a model or connector call refused by Policy: for residency (``policies.residency``)
        or by the Policies selecting the Model (``policies.model_calls``, tenant or residency): kind ``policy``,
        decision ``deny``, naming the step, why, and the versions of the Policies that decided it (those the error
        names, else the workflow's residency Policies); None for any other failure."""
        if result.kind == RESIDENCY_DENIED:
            reason = "residency-denied"
        elif result.kind == MODEL_TENANT_DENIED:
            reason = "tenant-denied"
        else:
            return None
        if result.policies:
            deciding = sorted(result.policies)
        else:
            governing = self.governing(claimed.workflow) if self.governing is not None else ()
            deciding = sorted(str(ref(p)) for p in governing if p.spec.residency is not None)
        details = {
            "reason": reason,
            "detail": result.message,
            "workflow": claimed.workflow,
            "step": claimed.step,
            "policies": deciding,
        }
        if claimed.region is not None:  # the task's own region, which narrowed what its Policies allow
            details["region"] = claimed.region
        return AuditEntry("policy", f"task/{claimed.task_id}", "deny", details, tenant=claimed.tenant, actor="engine")

    def _write(self, action: Callable[[sa.Connection], T], attempts: int = 5) -> T:
        """Run ``action`` in a write transaction, retrying transient database errors (lock timeouts, deadlocks,
        a dropped connection): losing a step's result to a blip would mean running the step again."""
        delay = 0.05
        for attempt in range(1, attempts + 1):
            try:
                with self.db.write() as conn:
                    return action(conn)
            except sa.exc.OperationalError:
                if attempt == attempts:
                    raise
                log.warning("worker %s: transient database error, retrying", self.id, exc_info=True)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    # ---------------------------------------------------------------- heartbeats

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.config.heartbeat_interval):
            self.heartbeat()
        # Keep extending leases while the pool drains after stop() so finishing steps are not stolen.
        while True:
            with self._inflight_lock:
                if not self._inflight:
                    return
            self.heartbeat()
            time.sleep(self.config.heartbeat_interval)

    def heartbeat(self) -> None:
        with self._inflight_lock:
            inflight = list(self._inflight.values())
        for claimed in inflight:
            try:
                with self.db.write() as conn:
                    held = self.machine.heartbeat(conn, claimed, lease=self.config.lease, now=self.clock())
                with self._inflight_lock:
                    still_running = claimed.step_run_id in self._inflight and claimed.step_run_id not in self._reporting
                # A step whose result was written since the snapshot above has no lease left either; only a step
                # still running here has really lost it (its result will be refused).
                if not held and still_running:
                    log.warning(
                        "worker %s: lease of step %s of task %s is gone", self.id, claimed.step, claimed.task_id
                    )
            except Exception:
                log.exception("worker %s: heartbeat failed", self.id)

    # ---------------------------------------------------------------- maintenance

    def _maintenance_loop(self) -> None:
        while not self._stop.wait(self.config.maintenance_interval):
            self.maintain()

    def maintain(self) -> None:
        """One round of the sweeps; each is its own transaction, safe to run in many workers at once."""
        for name, sweep in (
            ("approval expiry", self._expire_approvals),
            ("sla", self._breach_slas),
            ("outbox relay", self._relay),
            ("callbacks", self._send_callbacks),
            ("gauges", self.refresh_gauges),
            ("idempotency purge", self._purge_expired_keys),
            ("retention purge", self._purge_retention),
        ):
            try:
                sweep()
            except Exception:
                log.exception("worker %s: %s sweep failed", self.id, name)

    def _expire_approvals(self) -> None:
        now = self.clock()
        if self.db.is_sqlite and not self._work_due(now):
            return
        with self.db.write() as conn:
            self.machine.expire_approvals(conn, now=now)

    def _breach_slas(self) -> None:
        now = self.clock()
        if self.db.is_sqlite and not self._work_due(now):
            return
        with self.db.write() as conn:
            breached = self.machine.breach_slas(conn, now=now)
        for workflow in breached:
            metrics.SLA_BREACHES.labels(workflow).inc()

    def _send_callbacks(self) -> None:
        if self.callbacks is not None:
            self.callbacks.send_due()

    def _relay(self) -> None:
        if self.relay is not None:
            # Another worker's relay having the turn publishes the rest: no maintenance round waits on a broker.
            self.relay.drain(wait=False)

    def _purge_expired_keys(self) -> None:
        # Expired idempotency records are dead weight; dropping them here keeps the table at about a TTL's worth
        # of keys without a separate job.
        if time.monotonic() - self._last_purge < self.config.gauges_interval:
            return
        self._last_purge = time.monotonic()
        with self.db.write() as conn:
            conn.execute(sa.delete(idempotency_keys).where(idempotency_keys.c.expires_at <= self.clock()))

    def _purge_retention(self) -> None:
        if self.retention is None or time.monotonic() - self._last_retention < self.config.retention_interval:
            return
        self._last_retention = time.monotonic()
        self.retention()

    def refresh_gauges(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_gauges < self.config.gauges_interval:
            return
        self._last_gauges = time.monotonic()
        gauges.refresh(self.db)


def _allowed(claimed: Claimed, ctx: StepContext) -> list[Entry]:
    """The ``policy``/``allow`` records of the calls Policies allowed in this attempt (``StepContext.allowed``: a
    model step's call, an agent's planner calls and model actions, to Models that Policies select), on the attempt
    as its masking record is: one per Model and Policy versions, with how many ``calls``; none when no Policy
    governed a call."""
    if not ctx.allowed:
        return []
    counted: dict[tuple[str, tuple[str, ...]], int] = {}
    for call in ctx.allowed:
        key = (str(call["model"]), tuple(call["policies"]))
        counted[key] = counted.get(key, 0) + 1
    subject = f"task/{claimed.task_id}/step/{claimed.step}/attempt/{claimed.attempt}"
    return [
        AuditEntry(
            "policy",
            subject,
            "allow",
            {
                "workflow": claimed.workflow,
                "step": claimed.step,
                "model": model,
                "policies": list(policies),
                "calls": calls,
            },
            tenant=claimed.tenant,
            actor="engine",
        )
        for (model, policies), calls in counted.items()
    ]


def _masked(
    pii: WorkflowMasking, claimed: Claimed, result: StepOutcome | StepError | StepDeferredError
) -> tuple[StepOutcome | StepError | StepDeferredError, Entry | None]:
    """The attempt's result with personal data masked (what the store, the trace and the log then see), and the
    audit record of what was masked in its output and vars (never the values), if anything was."""
    tenant, workflow = claimed.tenant, claimed.workflow
    if isinstance(result, StepOutcome):
        variables = dict(result.vars) if result.vars else result.vars
        output, variables, summary = pii.mask_step(tenant, workflow, claimed.step, result.output, variables)
        subject = f"task/{claimed.task_id}/step/{claimed.step}/attempt/{claimed.attempt}"
        entry = pii.audit_entry(tenant, workflow, subject, summary, actor="engine") if summary else None
        return dataclasses.replace(result, output=output, vars=variables), entry
    if isinstance(result, StepError):
        message = pii.text(tenant, workflow, result.message)
        if message != result.message:
            return StepError(
                result.kind, message, retryable=result.retryable, status=result.status, retry_after=result.retry_after
            ), None
    return result, None
