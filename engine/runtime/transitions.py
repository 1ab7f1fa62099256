"""Every state change of a task, its step runs and approvals, as functions over one open write transaction.

The rules these functions keep, and why they are enough:

* Each function first locks the task row (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already
  serialises writers) and checks the state it expects, so concurrent callers (a worker completing a step, an
  approver, the SLA sweep, a cancel) see one another's effects and cannot both advance a task.
* A worker may only finish a step run while it holds the run's current ``lease_token`` (a fencing token, new at
  every claim). A worker whose lease expired, or whose task jumped elsewhere, finds its completion refused.
* Completing a step and entering the next one (or finishing the task) happen in the same transaction, and a
  succeeded run is never claimable again: a completed step is never run twice.
* Every change appends its outbox event in the same transaction.
* A worker may take the next step along with a completion (``Chain``); that step is leased exactly as a claim
  would lease it, so everything above holds for it too.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from crds.workflow import Step, WorkflowSpec
from engine import callbacks, metrics
from engine.clock import new_id
from engine.durations import parse_duration
from engine.errors import (
    ApprovalNotFoundError,
    InvalidStateError,
    NotAuthorizedError,
    StepDeferredError,
    StepError,
    TaskNotFoundError,
)
from engine.executors.base import StepOutcome
from engine.flow import definitions, graph
from engine.models import TERMINAL_TASK_STATES, ApprovalState, StepState, TaskState
from engine.payloads import Encoded, PayloadCodec
from engine.retry import is_retryable, retry_delay
from engine.runtime import gate as policy_gate
from engine.runtime.queue import PriorityPolicy
from engine.store import audit, outbox
from engine.store.database import after_commit, pipeline
from engine.store.prepared import Prepared
from engine.store.schema import approvals, attempts, dead_letters, step_runs, tasks
from engine.store.types import UTCDateTime

# A task refused at a Policy approval keeps no result (it was held there only for the approvers).
_NO_RESULT: dict[str, Any] = {"result": None, "result_ref": None}
# Whether a person decided one of a task's approvals (an expiry is the engine's): the path label of finished tasks.
_HUMAN_DECIDED = (
    sa.select(approvals.c.id)
    .where(
        approvals.c.task_id == sa.bindparam("_task_id"),
        approvals.c.state.in_([ApprovalState.APPROVED, ApprovalState.REJECTED]),
    )
    .limit(1)
)

# Reasons a task is dead-lettered.
NON_RETRYABLE = "NonRetryable"
RETRIES_EXHAUSTED = "RetriesExhausted"

ACTIVE_STEP_STATES = (StepState.RUNNABLE, StepState.RUNNING, StepState.WAITING)
ACTIVE_TASK_STATES = (TaskState.QUEUED, TaskState.RUNNING, TaskState.WAITING)
# What a step run's lease columns hold once no worker holds it (completed, failed, retried later, cancelled).
RELEASED_LEASE: dict[str, Any] = {"lease_owner": None, "lease_token": None, "lease_expires_at": None}

# The statements of a step's path (claim, complete, enter the next), built once and run with parameters: building
# a Core statement per call (coercing each value, regenerating the cache key) cost about five times running a
# prebuilt one and was most of a step's CPU time (benchmarks/bench_engine). UPDATEs take their SET columns from the
# parameters' keys; WHERE parameters start with "_" so they never clash with a column.
log = logging.getLogger(__name__)
_LOCK_TASK = sa.select(tasks).where(tasks.c.id == sa.bindparam("_task_id")).with_for_update()
_LOCK_TASK_ROW = Prepared(_LOCK_TASK)  # the same, for a pipeline (SQLAlchemy would wait for its result at once)
_UPDATE_TASK = Prepared(sa.update(tasks).where(tasks.c.id == sa.bindparam("_task_id")))
_UPDATE_HELD_RUN = Prepared(
    sa.update(step_runs)
    .where(
        step_runs.c.id == sa.bindparam("_run_id"),
        step_runs.c.lease_token == sa.bindparam("_token"),
        step_runs.c.state == StepState.RUNNING,
    )
    # Whether it matched: inside a pipeline a row count is known only once the results are read.
    .returning(step_runs.c.id)
)
_FINISH_ATTEMPT = Prepared(
    sa.update(attempts).where(
        attempts.c.step_run_id == sa.bindparam("_run_id"),
        attempts.c.number == sa.bindparam("_number"),
        attempts.c.outcome == "running",
    )
)
_INSERT_RUN = Prepared(sa.insert(step_runs))
_INSERT_ATTEMPT = Prepared(sa.insert(attempts))
_INSERT_APPROVAL = Prepared(sa.insert(approvals))
# Whether a due runnable step of any task goes before one entered now with ``_sort_at``.
_QUEUED_AHEAD = Prepared(
    sa.select(step_runs.c.id)
    .where(
        step_runs.c.state == StepState.RUNNABLE,
        step_runs.c.sort_at < sa.bindparam("_sort_at", type_=step_runs.c.sort_at.type),
        step_runs.c.next_run_at <= sa.bindparam("_now", type_=step_runs.c.next_run_at.type),
    )
    .limit(1)
)


@dataclass(frozen=True, kw_only=True)
class Claimed:
    """A step run leased to a worker: what it needs to run the attempt and to report back."""

    step_run_id: str
    task_id: str
    tenant: str
    workflow: str
    workflow_version: str
    priority: str
    step: str
    step_type: str
    seq: int
    attempt: int
    lease_token: str
    idempotency_key: str
    trace_context: str | None
    deadline: datetime | None
    #: The task's own region (``tasks.region``): its model and connector calls stay there.
    region: str | None = None


@dataclass(frozen=True)
class FailResult:
    retrying: bool
    delay: timedelta | None = None


@dataclass(frozen=True)
class Chain:
    """Lets ``complete`` lease the task's next step to the completing worker in the same transaction.

    Without it a step costs two write transactions (claim, then complete-and-enter-next) and a trip through the
    claim loop; with it a sequence of steps runs back to back on one worker, one transaction per step, the way
    Temporal dispatches eagerly. Only when no other runnable step is due ahead of it, so chaining never lets a
    task jump the queue.
    """

    worker: str
    lease: timedelta
    #: Step types the worker can run (an approval is never chained: it waits for people, not workers).
    types: frozenset[str]


@dataclass(frozen=True, kw_only=True)
class Entry:
    """The rows entering a step writes: the step run, the task row's new values, and what goes with them."""

    run: dict[str, Any]
    task: dict[str, Any]
    approval: dict[str, Any] | None
    #: The first attempt, when the step is entered already leased.
    attempt: dict[str, Any] | None
    events: list[dict[str, Any]]

    def claimed(self, task: Any) -> Claimed | None:
        """The lease of a step entered leased, as a claim would have returned it; None otherwise."""
        if self.attempt is None:
            return None
        run = self.run
        return Claimed(
            step_run_id=run["id"],
            task_id=task.id,
            tenant=task.tenant,
            workflow=task.workflow,
            workflow_version=task.workflow_version,
            priority=task.priority,
            step=run["name"],
            step_type=run["type"],
            seq=run["seq"],
            attempt=1,
            lease_token=run["lease_token"],
            idempotency_key=run["idempotency_key"],
            trace_context=task.trace_context,
            deadline=task.deadline,
            region=task.region,
        )


@dataclass(frozen=True)
class Completed:
    """A recorded completion; ``next`` is the task's next step when it was chained to the same worker."""

    next: Claimed | None = None


# The claim's and the idle poll's statements, built once: building them cost more than running them.
_NOW = sa.bindparam("_now", type_=UTCDateTime())
# Claimable: runnable and due; or running with an expired lease (its worker died).
_DUE = sa.and_(step_runs.c.state == StepState.RUNNABLE, step_runs.c.next_run_at <= _NOW)
_LOST = sa.and_(step_runs.c.state == StepState.RUNNING, step_runs.c.lease_expires_at <= _NOW)
_CLAIM_CANDIDATES = (
    sa.select(step_runs)
    .join(tasks, tasks.c.id == step_runs.c.task_id)
    .where(sa.or_(_DUE, _LOST))
    .order_by(step_runs.c.sort_at, step_runs.c.id)
    .limit(sa.bindparam("_limit"))
    .with_for_update(skip_locked=True, of=[step_runs, tasks])
)
_LEASE_RUN = Prepared(
    sa.update(step_runs)
    .where(step_runs.c.id == sa.bindparam("_run_id"), sa.or_(_DUE, _LOST))
    .values(
        state=StepState.RUNNING,
        lease_owner=sa.bindparam("_worker"),
        lease_token=sa.bindparam("_token"),
        lease_expires_at=sa.bindparam("_expires", type_=UTCDateTime()),
        attempts=step_runs.c.attempts + 1,
        started_at=sa.func.coalesce(step_runs.c.started_at, _NOW),
        updated_at=_NOW,
    )
)
_WORK_DUE = tuple(
    Prepared(probe.limit(1))
    for probe in (
        sa.select(step_runs.c.id).where(sa.or_(_DUE, _LOST)),
        sa.select(approvals.c.id).where(approvals.c.state == ApprovalState.PENDING, approvals.c.expires_at <= _NOW),
        sa.select(tasks.c.id).where(
            # Equalities rather than IN: an IN list is an expanding parameter, which a Prepared statement refuses.
            sa.or_(*(tasks.c.state == state for state in ACTIVE_TASK_STATES)),
            tasks.c.deadline <= _NOW,
            tasks.c.sla_breached_at.is_(None),
        ),
    )
)


def step_idempotency_key(task_id: str, seq: int, step: str) -> str:
    """Stable for a step run across its retries and replays; distinct for each visit of a step."""
    return f"{task_id}-{seq}-{step}"


class StateMachine:
    def __init__(
        self,
        codec: PayloadCodec,
        priorities: PriorityPolicy | None = None,
        *,
        rng: random.Random | None = None,
        max_step_runs: int = 1000,
    ) -> None:
        self.codec = codec
        self.priorities = priorities or PriorityPolicy()
        self.rng = rng or random.Random()
        #: Guards against workflows that loop forever (a rules branch back to an earlier step).
        self.max_step_runs = max_step_runs
        #: Policies' approval rules, checked where a task would succeed; None (no Policy has any) costs nothing.
        self.gate: policy_gate.ApprovalGate | None = None

    # ---------------------------------------------------------------- claim / heartbeat

    def claim(self, conn: sa.Connection, *, worker: str, limit: int, lease: timedelta, now: datetime) -> list[Claimed]:
        """Lease up to ``limit`` runnable steps, best ``sort_at`` first.

        Claimable: runnable and due, or running with an expired lease (its worker died). On PostgreSQL the
        candidates are locked ``FOR UPDATE SKIP LOCKED``, so concurrent workers take disjoint sets without
        waiting; SQLite renders no FOR UPDATE and relies on the write transaction being the only writer.
        """
        # Lock the step run and its task together and skip rows anyone else holds: a claim never waits, so it
        # cannot deadlock with a completion or decision (those lock the task first, then the run).
        candidates = conn.execute(_CLAIM_CANDIDATES, {"_now": now, "_limit": limit}).all()
        claimed: list[Claimed] = []
        for run in candidates:
            task = self._lock_task(conn, run.task_id)
            spec = definitions.load(conn, task.workflow, task.workflow_version)
            step = graph.step_named(spec, run.name)
            if run.state == StepState.RUNNING:
                # The previous worker died (or stalled past its lease): its attempt counts as used.
                lease_error = {"kind": "LeaseExpired", "message": "worker lost its lease"}
                self._finish_attempt(conn, run.id, run.attempts, "lost", error=lease_error, now=now)
                if run.attempts - run.attempt_base >= step.retry.max_attempts:
                    error = {
                        "kind": "LeaseExpired",
                        "message": f"the worker running attempt {run.attempts} lost its lease and no attempts are left",
                        "retryable": True,
                    }
                    self._fail_run(conn, task, run, error, now)
                    self._dead_letter(conn, task, run, RETRIES_EXHAUSTED, error, now=now)
                    continue
                outbox.append(
                    conn,
                    outbox.STEP_RETRYING,
                    task_id=task.id,
                    tenant=task.tenant,
                    payload={
                        "step": run.name,
                        "attempt": run.attempts,
                        "delaySeconds": 0,
                        "error": {"kind": "LeaseExpired", "message": f"worker {run.lease_owner} lost its lease"},
                    },
                    now=now,
                )
            token = new_id()
            updated = _LEASE_RUN.execute(
                conn, {"_run_id": run.id, "_worker": worker, "_token": token, "_expires": now + lease, "_now": now}
            )
            if updated.rowcount != 1:  # pragma: no cover - only reachable if the locking above were bypassed
                continue
            attempt = run.attempts + 1
            _INSERT_ATTEMPT.execute(
                conn,
                {
                    "id": new_id(),
                    "step_run_id": run.id,
                    "task_id": run.task_id,
                    "number": attempt,
                    "worker": worker,
                    "outcome": "running",
                    "started_at": now,
                },
            )
            if task.state == TaskState.QUEUED:
                _UPDATE_TASK.execute(conn, {"_task_id": task.id, "state": TaskState.RUNNING, "updated_at": now})
            outbox.append(
                conn,
                outbox.STEP_STARTED,
                task_id=task.id,
                tenant=task.tenant,
                payload={"step": run.name, "type": run.type, "attempt": attempt, "worker": worker},
                now=now,
            )
            claimed.append(
                Claimed(
                    step_run_id=run.id,
                    task_id=task.id,
                    tenant=task.tenant,
                    workflow=task.workflow,
                    workflow_version=task.workflow_version,
                    priority=task.priority,
                    step=run.name,
                    step_type=run.type,
                    seq=run.seq,
                    attempt=attempt,
                    lease_token=token,
                    idempotency_key=run.idempotency_key,
                    trace_context=task.trace_context,
                    deadline=task.deadline,
                    region=task.region,
                )
            )
        return claimed

    @staticmethod
    def work_due(conn: sa.Connection, now: datetime) -> bool:
        """Whether anything is claimable, expirable or breached: a cheap read that lets an idle SQLite worker
        skip taking the database's single write lock on every poll."""
        return any(probe.execute(conn, {"_now": now}).fetchone() is not None for probe in _WORK_DUE)

    @staticmethod
    def heartbeat(conn: sa.Connection, claimed: Claimed, *, lease: timedelta, now: datetime) -> bool:
        """Extend the lease; False if it was lost (expired and reclaimed, or the task moved on)."""
        extended = conn.execute(
            sa.update(step_runs)
            .where(
                step_runs.c.id == claimed.step_run_id,
                step_runs.c.lease_token == claimed.lease_token,
                step_runs.c.state == StepState.RUNNING,
            )
            .values(lease_expires_at=now + lease, updated_at=now)
        )
        return extended.rowcount == 1

    # ---------------------------------------------------------------- step results

    def complete(
        self, conn: sa.Connection, claimed: Claimed, outcome: StepOutcome, now: datetime, *, chain: Chain | None = None
    ) -> Completed | None:
        """Record a successful attempt and move the task on; None if this worker no longer holds the lease."""
        encoded = self.codec.encode(outcome.output)
        spec = definitions.load(conn, claimed.workflow, claimed.workflow_version)
        # On PostgreSQL the statements go to the server together (a pipeline): on a step's path round trips cost
        # more than the statements (benchmarks/bench_engine). The server runs them in order, the task's lock first.
        with pipeline(conn):
            return self._complete(conn, claimed, outcome, now, encoded=encoded, spec=spec, chain=chain)

    def _complete(
        self,
        conn: sa.Connection,
        claimed: Claimed,
        outcome: StepOutcome,
        now: datetime,
        *,
        encoded: Encoded,
        spec: WorkflowSpec,
        chain: Chain | None,
    ) -> Completed | None:
        following = graph.following(spec, graph.step_named(spec, claimed.step), outcome.next_step)
        next_step = None if following is None else graph.step_named(spec, following)
        locked = _LOCK_TASK_ROW.execute(conn, {"_task_id": claimed.task_id})
        done = _UPDATE_HELD_RUN.execute(
            conn,
            {
                "_run_id": claimed.step_run_id,
                "_token": claimed.lease_token,
                "state": StepState.SUCCEEDED,
                "output": encoded.inline,
                "output_ref": encoded.ref,
                "error": None,
                **RELEASED_LEASE,
                "finished_at": now,
                "updated_at": now,
            },
        )
        # Asked along with the statements above (one round trip), read only if the lease was held.
        ahead = None
        if chain is not None and next_step is not None and next_step.type in chain.types:
            sort_at = self.priorities.sort_at(claimed.priority, now)
            ahead = _QUEUED_AHEAD.execute(conn, {"_sort_at": sort_at, "_now": now})
        task = _LOCK_TASK_ROW.first(conn, locked)
        if task is None:
            raise TaskNotFoundError(f"no task {claimed.task_id!r}", task_id=claimed.task_id)
        if done.fetchone() is None:
            return None
        # The held lease pins the run's attempt count to the claim's, so the claim tells which attempt to close.
        self._finish_attempt(conn, claimed.step_run_id, claimed.attempt, "succeeded", error=None, now=now)
        # Written with the next step's events in one INSERT.
        payload: dict[str, Any] = {"step": claimed.step, "type": claimed.step_type, "attempt": claimed.attempt}
        if outcome.lineage is not None:
            payload["lineage"] = outcome.lineage
        completed = outbox.event(outbox.STEP_COMPLETED, task_id=task.id, tenant=task.tenant, payload=payload, now=now)
        # The vars go into the same UPDATE of the task row that enters the next step or finishes the task.
        task_values = {"vars": {**task.vars, **outcome.vars}} if outcome.vars else {}
        if next_step is None:
            if (self.gate is not None or policy_gate.asks_human(task)) and self._gated(
                conn,
                task,
                result=encoded,
                output=outcome.output,
                vars={**task.vars, **outcome.vars},
                now=now,
                task_values=task_values,
                events=[completed],
            ):
                return Completed()
            self._finish_task(
                conn, task, TaskState.SUCCEEDED, now, result=encoded, task_values=task_values, events=[completed]
            )
            return Completed()
        # Chained only when no due step of any task waits ahead of it: chaining never lets a task jump the queue.
        lease = chain if ahead is not None and ahead.fetchone() is None else None
        entered = self._enter_step(
            conn, task, spec, next_step, now, task_values=task_values, lease=lease, events=[completed]
        )
        return Completed(next=entered)

    def fail(self, conn: sa.Connection, claimed: Claimed, error: StepError, now: datetime) -> FailResult | None:
        """Record a failed attempt: schedule a retry, or dead-letter the task. None if the lease was lost."""
        task = self._lock_task(conn, claimed.task_id)
        run = self._run(conn, claimed.step_run_id)
        if run.state != StepState.RUNNING or run.lease_token != claimed.lease_token:
            return None
        spec = definitions.load(conn, task.workflow, task.workflow_version)
        step = graph.step_named(spec, run.name)
        used = run.attempts - run.attempt_base
        details = error.as_dict()
        if is_retryable(error, step.retry) and used < step.retry.max_attempts:
            delay = retry_delay(error, step.retry, used, self.rng)
            ready_at = now + delay
            conn.execute(
                sa.update(step_runs)
                .where(*self._held(claimed))
                .values(
                    state=StepState.RUNNABLE,
                    error=details,
                    next_run_at=ready_at,
                    sort_at=self.priorities.sort_at(run.priority, ready_at),
                    **RELEASED_LEASE,
                    updated_at=now,
                )
            )
            self._finish_attempt(conn, run.id, run.attempts, "retrying", error=details, now=now)
            outbox.append(
                conn,
                outbox.STEP_RETRYING,
                task_id=task.id,
                tenant=task.tenant,
                payload={
                    "step": run.name,
                    "attempt": run.attempts,
                    "delaySeconds": delay.total_seconds(),
                    "error": details,
                },
                now=now,
            )
            return FailResult(retrying=True, delay=delay)
        self._finish_attempt(conn, run.id, run.attempts, "failed", error=details, now=now)
        self._fail_run(conn, task, run, details, now)
        reason = RETRIES_EXHAUSTED if is_retryable(error, step.retry) else NON_RETRYABLE
        self._dead_letter(conn, task, run, reason, details, now=now)
        return FailResult(retrying=False)

    def defer(self, conn: sa.Connection, claimed: Claimed, deferred: StepDeferredError, now: datetime) -> bool:
        """The attempt never reached the downstream: give the attempt back and wait ``deferred.delay``."""
        self._lock_task(conn, claimed.task_id)
        run = self._run(conn, claimed.step_run_id)
        ready_at = now + deferred.delay
        released = conn.execute(
            sa.update(step_runs)
            .where(*self._held(claimed))
            .values(
                state=StepState.RUNNABLE,
                attempts=step_runs.c.attempts - 1,
                next_run_at=ready_at,
                sort_at=self.priorities.sort_at(run.priority, ready_at),
                **RELEASED_LEASE,
                updated_at=now,
            )
        )
        if released.rowcount != 1:
            return False
        deferral = {"kind": "Deferred", "message": deferred.reason}
        self._finish_attempt(conn, run.id, run.attempts, "deferred", error=deferral, now=now)
        return True

    # ---------------------------------------------------------------- approvals

    def decide(
        self,
        conn: sa.Connection,
        *,
        approval_id: str,
        approver: str,
        approve: bool,
        reason: str,
        roles: frozenset[str] | None,
        tenant: str | None,
        now: datetime,
    ) -> None:
        """Record one approver's decision; at quorum (or the first rejection) the task moves on.

        ``roles`` are the approver's roles in the tenant, as the gateway authenticated them; None skips the
        check (trusted in-process callers and the CLI in dev mode).
        """
        row = conn.execute(sa.select(approvals).where(approvals.c.id == approval_id)).first()
        if row is None or (tenant is not None and row.tenant != tenant):
            raise ApprovalNotFoundError(f"no approval {approval_id!r}", approval_id=approval_id)
        task = self._lock_task(conn, row.task_id)
        approval = conn.execute(sa.select(approvals).where(approvals.c.id == approval_id)).one()
        if approval.state != ApprovalState.PENDING:
            raise InvalidStateError(f"approval {approval_id} is already {approval.state}", state=approval.state)
        if approval.expires_at <= now:
            raise InvalidStateError(f"approval {approval_id} expired at {approval.expires_at.isoformat()}")
        if roles is not None and approver not in approval.users and not roles.intersection(approval.roles):
            raise NotAuthorizedError(
                f"{approver!r} may not decide this approval: it needs one of the roles "
                f"{', '.join(approval.roles) or '(none)'} or one of its named users",
                approver=approver,
            )
        decisions: list[dict[str, Any]] = list(approval.decisions)
        if any(d["approver"] == approver for d in decisions):
            raise InvalidStateError(f"{approver!r} has already decided approval {approval_id}", approver=approver)
        decision = "approve" if approve else "reject"
        decisions.append({"approver": approver, "decision": decision, "reason": reason, "at": now.isoformat()})
        approved = sum(1 for d in decisions if d["decision"] == "approve")
        if not approve:
            state = ApprovalState.REJECTED
        elif approved >= approval.quorum:
            state = ApprovalState.APPROVED
        else:
            state = ApprovalState.PENDING
        conn.execute(
            sa.update(approvals)
            .where(approvals.c.id == approval_id)
            .values(
                decisions=decisions,
                state=state,
                decided_at=None if state == ApprovalState.PENDING else now,
            )
        )
        outbox.append(
            conn,
            outbox.APPROVAL_DECIDED,
            task_id=task.id,
            tenant=task.tenant,
            payload={
                "approvalId": approval_id,
                "step": approval.step,
                "approver": approver,
                "decision": decision,
                "reason": reason,
                "state": state,
                "approvals": approved,
                "quorum": approval.quorum,
            },
            now=now,
        )
        # In this transaction: a decision is never in effect without its audit record, nor recorded if undone.
        audit.append_approval(
            conn,
            task,
            approval,
            approver=approver,
            decision=decision,
            reason=reason,
            state=state,
            approvals=approved,
            now=now,
        )
        if state == ApprovalState.PENDING:
            return
        after_commit(conn, metrics.APPROVALS_DECIDED.labels(task.workflow, state.value).inc)
        spec = definitions.load(conn, task.workflow, task.workflow_version)
        if policy_gate.is_policy_approval(approval.step, spec):
            self._decide_policy_approval(
                conn, task, approval, state=state, decisions=decisions, approver=approver, reason=reason, now=now
            )
            return
        step = graph.step_named(spec, approval.step)
        assert step.approval is not None
        output = {"decision": state.value, "decisions": decisions}
        encoded = self._succeed_waiting_run(conn, approval.step_run_id, output, now)
        self._event_step_completed(conn, task, approval.step, now)
        if state == ApprovalState.APPROVED:
            self._advance(conn, task, spec, graph.following(spec, step), encoded, now=now)
        elif step.approval.on_reject is not None:
            self._enter_step(conn, task, spec, graph.step_named(spec, step.approval.on_reject), now)
        else:
            error = {"kind": "Rejected", "message": reason or "rejected", "approver": approver, "step": step.name}
            self._finish_task(conn, task, TaskState.REJECTED, now, error=error)

    def expire_approvals(self, conn: sa.Connection, *, now: datetime, limit: int = 100) -> int:
        """Expire pending approvals past ``expires_at``: continue at ``onExpire`` or fail the task."""
        # Not locked here: like every transition this locks the task first (a decision does the same), and it
        # skips tasks someone else holds rather than waiting, so the sweep can never deadlock with a decision.
        due = conn.execute(
            sa.select(approvals.c.id, approvals.c.task_id)
            .where(approvals.c.state == ApprovalState.PENDING, approvals.c.expires_at <= now)
            .order_by(approvals.c.expires_at)
            .limit(limit)
        ).all()
        expired = 0
        for candidate in due:
            task = conn.execute(
                sa.select(tasks).where(tasks.c.id == candidate.task_id).with_for_update(skip_locked=True)
            ).first()
            if task is None:
                continue  # busy: the next round gets it
            approval = conn.execute(sa.select(approvals).where(approvals.c.id == candidate.id)).one()
            if approval.state != ApprovalState.PENDING:
                continue
            expired += 1
            after_commit(conn, metrics.APPROVALS_DECIDED.labels(task.workflow, ApprovalState.EXPIRED.value).inc)
            conn.execute(
                sa.update(approvals)
                .where(approvals.c.id == approval.id)
                .values(state=ApprovalState.EXPIRED, decided_at=now)
            )
            spec = definitions.load(conn, task.workflow, task.workflow_version)
            if policy_gate.is_policy_approval(approval.step, spec):
                self._expire_policy_approval(conn, task, approval, now)
                continue
            step = graph.step_named(spec, approval.step)
            assert step.approval is not None
            outbox.append(
                conn,
                outbox.APPROVAL_EXPIRED,
                task_id=task.id,
                tenant=task.tenant,
                payload={"approvalId": approval.id, "step": approval.step, "escalateTo": step.approval.on_expire},
                now=now,
            )
            if step.approval.on_expire is not None:
                self._succeed_waiting_run(conn, approval.step_run_id, {"decision": "expired"}, now)
                self._event_step_completed(conn, task, approval.step, now)
                self._enter_step(conn, task, spec, graph.step_named(spec, step.approval.on_expire), now)
            else:
                error = {
                    "kind": "ApprovalExpired",
                    "message": f"approval at step {step.name!r} expired",
                    "step": step.name,
                }
                run = self._run(conn, approval.step_run_id)
                self._fail_run(conn, task, run, error, now)
                self._finish_task(conn, task, TaskState.FAILED, now, error=error)
        return expired

    # ---------------------------------------------------------------- SLA, cancel, replay

    def breach_slas(self, conn: sa.Connection, *, now: datetime, limit: int = 100) -> list[str]:
        """Mark active tasks past their deadline (once each) and jump to ``sla.escalateTo`` where set.

        Returns the workflows of the breached tasks (for the breach counter).
        """
        due = conn.execute(
            sa.select(tasks.c.id)
            .where(
                tasks.c.state.in_(ACTIVE_TASK_STATES),
                tasks.c.deadline <= now,
                tasks.c.sla_breached_at.is_(None),
            )
            .order_by(tasks.c.deadline)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        breached: list[str] = []
        for candidate in due:
            task = self._lock_task(conn, candidate.id)
            if task.state not in ACTIVE_TASK_STATES or task.sla_breached_at is not None:
                continue
            breached.append(task.workflow)
            conn.execute(sa.update(tasks).where(tasks.c.id == task.id).values(sla_breached_at=now, updated_at=now))
            spec = definitions.load(conn, task.workflow, task.workflow_version)
            escalate_to = spec.sla.escalate_to if spec.sla is not None else None
            outbox.append(
                conn,
                outbox.SLA_BREACHED,
                task_id=task.id,
                tenant=task.tenant,
                payload={
                    "workflow": task.workflow,
                    "deadline": task.deadline.isoformat() if task.deadline else None,
                    "step": task.current_step,
                    "escalateTo": escalate_to,
                },
                now=now,
            )
            if escalate_to is not None and escalate_to != task.current_step:
                self._cancel_active(conn, task.id, now)
                self._enter_step(conn, self._lock_task(conn, task.id), spec, graph.step_named(spec, escalate_to), now)
        return breached

    def cancel(self, conn: sa.Connection, *, tenant: str, task_id: str, reason: str, now: datetime) -> None:
        task = self._lock_task(conn, task_id, tenant=tenant)
        if task.state in TERMINAL_TASK_STATES:
            raise InvalidStateError(f"task {task_id} is already {task.state}", state=task.state)
        self._cancel_active(conn, task_id, now)
        self._finish_task(conn, task, TaskState.CANCELLED, now, error={"kind": "Cancelled", "message": reason})

    def replay(self, conn: sa.Connection, *, tenant: str, task_id: str, now: datetime) -> None:
        """Resume a dead-lettered task at the step that failed, with a fresh retry budget.

        Completed steps keep their outputs and are not run again; the failed step keeps its idempotency key, so
        a downstream that saw an earlier attempt can recognise the retry.
        """
        task = self._lock_task(conn, task_id, tenant=tenant)
        if task.state != TaskState.DEAD_LETTERED:
            raise InvalidStateError(
                f"only dead-lettered tasks can be replayed; task {task_id} is {task.state}", state=task.state
            )
        run = conn.execute(
            sa.select(step_runs)
            .where(step_runs.c.task_id == task_id, step_runs.c.state == StepState.FAILED)
            .order_by(step_runs.c.seq.desc())
            .limit(1)
        ).one()
        conn.execute(
            sa.update(step_runs)
            .where(step_runs.c.id == run.id)
            .values(
                state=StepState.RUNNABLE,
                attempt_base=run.attempts,
                next_run_at=now,
                sort_at=self.priorities.sort_at(run.priority, now),
                finished_at=None,
                updated_at=now,
            )
        )
        conn.execute(
            sa.update(tasks)
            .where(tasks.c.id == task_id)
            .values(
                state=TaskState.RUNNING,
                error=None,
                finished_at=None,
                purge_after=None,
                current_step=run.name,
                updated_at=now,
            )
        )
        conn.execute(
            sa.update(dead_letters)
            .where(dead_letters.c.task_id == task_id, dead_letters.c.replayed_at.is_(None))
            .values(replayed_at=now)
        )
        outbox.append(
            conn, outbox.TASK_REPLAYED, task_id=task_id, tenant=task.tenant, payload={"step": run.name}, now=now
        )

    # ---------------------------------------------------------------- internals

    @staticmethod
    def _held(claimed: Claimed) -> tuple[sa.ColumnElement[bool], ...]:
        return (
            step_runs.c.id == claimed.step_run_id,
            step_runs.c.lease_token == claimed.lease_token,
            step_runs.c.state == StepState.RUNNING,
        )

    @staticmethod
    def _lock_task(conn: sa.Connection, task_id: str, *, tenant: str | None = None) -> sa.Row[Any]:
        if tenant is None:
            row = conn.execute(_LOCK_TASK, {"_task_id": task_id}).first()
        else:
            query = sa.select(tasks).where(tasks.c.id == task_id, tasks.c.tenant == tenant).with_for_update()
            row = conn.execute(query).first()
        if row is None:
            raise TaskNotFoundError(f"no task {task_id!r}", task_id=task_id)
        return row

    @staticmethod
    def _run(conn: sa.Connection, step_run_id: str) -> sa.Row[Any]:
        return conn.execute(sa.select(step_runs).where(step_runs.c.id == step_run_id)).one()

    @staticmethod
    def _finish_attempt(
        conn: sa.Connection, run_id: str, number: int, outcome: str, *, error: dict[str, Any] | None, now: datetime
    ) -> None:
        _FINISH_ATTEMPT.execute(
            conn,
            {"_run_id": run_id, "_number": number, "outcome": outcome, "error": error, "finished_at": now},
        )

    def _enter_step(
        self,
        conn: sa.Connection,
        task: sa.Row[Any],
        spec: WorkflowSpec,
        step: Step,
        now: datetime,
        *,
        task_values: dict[str, Any] | None = None,
        lease: Chain | None = None,
        events: list[dict[str, Any]] | None = None,
    ) -> Claimed | None:
        """Create the next step run: runnable for a worker, or (approval) a pending approval holding no worker.

        With ``lease`` (the caller checked that chaining is allowed), the step is entered already leased to that
        worker and returned (its first attempt started); otherwise None.
        ``task_values``: more columns for the task row's update (the vars a completed step decided); ``events``:
        outbox rows to write with this step's own.
        """
        if task.step_seq + 1 > self.max_step_runs:
            error = {
                "kind": "StepLimitExceeded",
                "message": f"task ran {self.max_step_runs} steps; is the workflow looping?",
            }
            self._finish_task(conn, task, TaskState.FAILED, now, error=error, task_values=task_values, events=events)
            return None
        entered = self.entry(task, step, now, lease=lease)
        _INSERT_RUN.execute(conn, entered.run)
        _UPDATE_TASK.execute(conn, {"_task_id": task.id, **entered.task, **(task_values or {})})
        if entered.approval is not None:
            _INSERT_APPROVAL.execute(conn, entered.approval)
        if entered.attempt is not None:
            _INSERT_ATTEMPT.execute(conn, entered.attempt)
        outbox.insert(conn, [*(events or ()), *entered.events])
        return entered.claimed(task)

    def entry(self, task: Any, step: Step, now: datetime, *, lease: Chain | None = None) -> Entry:
        """What entering ``step`` writes, without writing it (``task``: a tasks row, or its values as attributes).

        ``lease``: enter it already leased to that worker, its first attempt started (the caller checked that
        chaining is allowed).
        """
        seq = task.step_seq + 1
        run_id = new_id()
        waiting = step.type == "approval"
        run: dict[str, Any] = {
            "id": run_id,
            "task_id": task.id,
            "seq": seq,
            "name": step.name,
            "type": step.type,
            "state": StepState.WAITING if waiting else StepState.RUNNABLE,
            "priority": task.priority,
            "attempts": 0,
            "attempt_base": 0,
            "idempotency_key": step_idempotency_key(task.id, seq, step.name),
            "next_run_at": None if waiting else now,
            "sort_at": None if waiting else self.priorities.sort_at(task.priority, now),
            "started_at": now if waiting else None,
            "lease_owner": None,
            "lease_token": None,
            "lease_expires_at": None,
            "output": None,
            "output_ref": None,
            "error": None,
            "finished_at": None,
            "created_at": now,
            "updated_at": now,
        }
        if waiting:
            state = TaskState.WAITING
        elif task.state == TaskState.QUEUED and lease is None:
            state = TaskState.QUEUED
        else:
            state = TaskState.RUNNING
        events: list[dict[str, Any]] = []
        approval = attempt = None
        if waiting:
            assert step.approval is not None
            approval_id = new_id()
            expires_at = now + parse_duration(step.approval.expiry)
            approval = {
                "id": approval_id,
                "task_id": task.id,
                "step_run_id": run_id,
                "tenant": task.tenant,
                "step": step.name,
                "state": ApprovalState.PENDING,
                "roles": list(step.approval.approvers.roles),
                "users": list(step.approval.approvers.users),
                "quorum": step.approval.quorum,
                "prompt": step.approval.prompt,
                "decisions": [],
                "expires_at": expires_at,
                "created_at": now,
            }
            payload = {
                "approvalId": approval_id,
                "step": step.name,
                "quorum": step.approval.quorum,
                "expiresAt": expires_at.isoformat(),
            }
            events.append(
                outbox.event(outbox.APPROVAL_REQUESTED, task_id=task.id, tenant=task.tenant, payload=payload, now=now)
            )
        elif lease is not None:
            run.update(
                state=StepState.RUNNING,
                lease_owner=lease.worker,
                lease_token=new_id(),
                lease_expires_at=now + lease.lease,
                attempts=1,
                started_at=now,
            )
            attempt = {
                "id": new_id(),
                "step_run_id": run_id,
                "task_id": task.id,
                "number": 1,
                "worker": lease.worker,
                "outcome": "running",
                "started_at": now,
            }
            payload = {"step": step.name, "type": step.type, "attempt": 1, "worker": lease.worker}
            events.append(
                outbox.event(outbox.STEP_STARTED, task_id=task.id, tenant=task.tenant, payload=payload, now=now)
            )
        task_update = {"step_seq": seq, "current_step": step.name, "state": state, "updated_at": now}
        return Entry(run=run, task=task_update, approval=approval, attempt=attempt, events=events)

    def _advance(
        self,
        conn: sa.Connection,
        task: sa.Row[Any],
        spec: WorkflowSpec,
        next_step: str | None,
        last_output: Encoded,
        *,
        now: datetime,
    ) -> None:
        if next_step is None:
            if self.gate is not None or policy_gate.asks_human(task):
                output = self.codec.decode(last_output.inline, last_output.ref)
                if self._gated(
                    conn, task, result=last_output, output=output, vars=task.vars, now=now, task_values={}, events=[]
                ):
                    return
            self._finish_task(conn, task, TaskState.SUCCEEDED, now, result=last_output)
        else:
            self._enter_step(conn, task, spec, graph.step_named(spec, next_step), now)

    def _gated(
        self,
        conn: sa.Connection,
        task: sa.Row[Any],
        *,
        result: Encoded,
        output: Any,
        vars: dict[str, Any],
        now: datetime,
        task_values: dict[str, Any],
        events: list[dict[str, Any]],
    ) -> bool:
        """Where ``task`` would succeed with ``output``: park it on a Policy approval (or the one its submitter
        asked for), or refuse it when the approval it needs cannot be given. False (nothing written) when none is
        needed."""
        gate = self.gate if self.gate is not None else policy_gate.UNRULED
        required = gate.check(conn, self.codec, task, result=output, vars=vars, now=now)
        if required is None:
            return False
        if not required.satisfiable:
            error = {
                "kind": "ApprovalUnsatisfiable",
                "message": f"approval rules {', '.join(required.rules)} triggered but share no role that could "
                "approve the task; fix the Policies' roles",
                "rules": list(required.rules),
            }
            policy_gate.record(conn, task, required, "unsatisfiable", now)
            self._finish_task(conn, task, TaskState.FAILED, now, error=error, task_values=task_values, events=events)
            return True
        parked = self.entry(task, gate.step(required), now)
        assert parked.approval is not None
        _INSERT_RUN.execute(conn, parked.run)
        # The business result waits on the task row; approval turns it into the task's result.
        held = {"result": result.inline, "result_ref": result.ref}
        _UPDATE_TASK.execute(conn, {"_task_id": task.id, **parked.task, **task_values, **held})
        _INSERT_APPROVAL.execute(conn, parked.approval)
        details = policy_gate.requested_details(required)
        requested = [{**event, "payload": {**event["payload"], **details}} for event in parked.events]
        outbox.insert(conn, [*events, *requested])
        policy_gate.record(conn, task, required, "required", now)
        return True

    def _decide_policy_approval(
        self,
        conn: sa.Connection,
        task: sa.Row[Any],
        approval: sa.Row[Any],
        *,
        state: ApprovalState,
        decisions: list[dict[str, Any]],
        approver: str,
        reason: str,
        now: datetime,
    ) -> None:
        """A Policy approval reached its quorum or a rejection: finish with the held result, or reject."""
        self._succeed_waiting_run(conn, approval.step_run_id, {"decision": state.value, "decisions": decisions}, now)
        self._event_step_completed(conn, task, approval.step, now)
        if state == ApprovalState.APPROVED:
            self._finish_task(conn, task, TaskState.SUCCEEDED, now, result=Encoded(task.result, task.result_ref))
        else:
            error = {"kind": "Rejected", "message": reason or "rejected", "approver": approver, "step": approval.step}
            self._finish_task(conn, task, TaskState.REJECTED, now, error=error, task_values=_NO_RESULT)

    def _expire_policy_approval(
        self, conn: sa.Connection, task: sa.Row[Any], approval: sa.Row[Any], now: datetime
    ) -> None:
        """Nobody decided a Policy approval in time: the task fails (a Policy names no escalation step)."""
        outbox.append(
            conn,
            outbox.APPROVAL_EXPIRED,
            task_id=task.id,
            tenant=task.tenant,
            payload={"approvalId": approval.id, "step": approval.step, "escalateTo": None},
            now=now,
        )
        audit.append_approval(
            conn,
            task,
            approval,
            approver="engine",
            decision="expire",
            reason=f"nobody decided before {approval.expires_at.isoformat()}",
            state=ApprovalState.EXPIRED,
            approvals=sum(1 for d in approval.decisions if d["decision"] == "approve"),
            now=now,
        )
        error = {
            "kind": "ApprovalExpired",
            "message": "the approval the Policies require expired",
            "step": approval.step,
        }
        self._fail_run(conn, task, self._run(conn, approval.step_run_id), error, now)
        self._finish_task(conn, task, TaskState.FAILED, now, error=error, task_values=_NO_RESULT)

    def _succeed_waiting_run(self, conn: sa.Connection, step_run_id: str, output: Any, now: datetime) -> Encoded:
        encoded = self.codec.encode(output)
        conn.execute(
            sa.update(step_runs)
            .where(step_runs.c.id == step_run_id, step_runs.c.state == StepState.WAITING)
            .values(
                state=StepState.SUCCEEDED,
                output=encoded.inline,
                output_ref=encoded.ref,
                finished_at=now,
                updated_at=now,
            )
        )
        return encoded

    @staticmethod
    def _event_step_completed(conn: sa.Connection, task: sa.Row[Any], step: str, now: datetime) -> None:
        outbox.append(
            conn,
            outbox.STEP_COMPLETED,
            task_id=task.id,
            tenant=task.tenant,
            payload={"step": step, "type": "approval"},
            now=now,
        )

    @staticmethod
    def _fail_run(
        conn: sa.Connection, task: sa.Row[Any], run: sa.Row[Any], error: dict[str, Any], now: datetime
    ) -> None:
        conn.execute(
            sa.update(step_runs)
            .where(step_runs.c.id == run.id)
            .values(
                state=StepState.FAILED,
                error=error,
                **RELEASED_LEASE,
                finished_at=now,
                updated_at=now,
            )
        )
        outbox.append(
            conn,
            outbox.STEP_FAILED,
            task_id=task.id,
            tenant=task.tenant,
            payload={"step": run.name, "type": run.type, "attempt": run.attempts, "error": error},
            now=now,
        )

    def _dead_letter(
        self,
        conn: sa.Connection,
        task: sa.Row[Any],
        run: sa.Row[Any],
        reason: str,
        error: dict[str, Any],
        *,
        now: datetime,
    ) -> None:
        conn.execute(
            sa.insert(dead_letters).values(
                id=new_id(),
                task_id=task.id,
                tenant=task.tenant,
                step_run_id=run.id,
                step=run.name,
                reason=reason,
                last_error=error,
                created_at=now,
            )
        )
        self._finish_task(conn, task, TaskState.DEAD_LETTERED, now, error={**error, "step": run.name, "reason": reason})

    def _finish_task(
        self,
        conn: sa.Connection,
        task: sa.Row[Any],
        state: TaskState,
        now: datetime,
        *,
        result: Encoded | None = None,
        error: dict[str, Any] | None = None,
        task_values: dict[str, Any] | None = None,
        events: list[dict[str, Any]] | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "state": state,
            "error": error,
            "finished_at": now,
            "updated_at": now,
            **(task_values or {}),
        }
        if (own := _own_retention(task)) is not None:
            values["purge_after"] = now + own
        if state == TaskState.SUCCEEDED:
            # ``result`` arrives already encoded (the last step's output), so a large result is not stored twice.
            values["result"] = result.inline if result is not None else None
            values["result_ref"] = result.ref if result is not None else None
        _UPDATE_TASK.execute(conn, {"_task_id": task.id, **values})
        event = {
            TaskState.SUCCEEDED: outbox.TASK_COMPLETED,
            TaskState.CANCELLED: outbox.TASK_CANCELLED,
            TaskState.DEAD_LETTERED: outbox.TASK_DEAD_LETTERED,
        }.get(state, outbox.TASK_FAILED)
        payload: dict[str, Any] = {"state": state.value, "workflow": task.workflow}
        if error is not None:
            payload["error"] = error
        ended = outbox.event(event, task_id=task.id, tenant=task.tenant, payload=payload, now=now)
        outbox.insert(conn, [*(events or ()), ended])
        if task.callback_url:
            callbacks.record(conn, callbacks.row(task, event, state.value, result=result, error=error, now=now))
        human = conn.execute(_HUMAN_DECIDED, {"_task_id": task.id}).first() is not None
        seconds = (now - task.created_at).total_seconds()
        after_commit(conn, lambda: metrics.task_finished(task.workflow, state.value, human=human, seconds=seconds))

    def _cancel_active(self, conn: sa.Connection, task_id: str, now: datetime) -> None:
        """Stop whatever the task is doing: a running worker's completion will find its lease token gone."""
        active = conn.execute(
            sa.select(step_runs.c.id, step_runs.c.attempts).where(
                step_runs.c.task_id == task_id, step_runs.c.state.in_(ACTIVE_STEP_STATES)
            )
        ).all()
        for run in active:
            conn.execute(
                sa.update(attempts)
                .where(attempts.c.step_run_id == run.id, attempts.c.outcome == "running")
                .values(outcome="abandoned", finished_at=now)
            )
        conn.execute(
            sa.update(step_runs)
            .where(step_runs.c.task_id == task_id, step_runs.c.state.in_(ACTIVE_STEP_STATES))
            .values(
                state=StepState.CANCELLED,
                **RELEASED_LEASE,
                finished_at=now,
                updated_at=now,
            )
        )
        conn.execute(
            sa.update(approvals)
            .where(approvals.c.task_id == task_id, approvals.c.state == ApprovalState.PENDING)
            .values(state=ApprovalState.CANCELLED, decided_at=now)
        )


def _own_retention(task: sa.Row[Any]) -> timedelta | None:
    """The task's own retention (its submitter's ``policy.retention``), if it has one."""
    text = task.annotations.get("retention") if isinstance(task.annotations, dict) else None
    if not isinstance(text, str):
        return None
    try:
        return parse_duration(text)
    except ValueError:  # the gateway validates it; a row written otherwise is left to the Policies' periods
        log.warning("task %s: unreadable retention annotation %r", task.id, text)
        return None
