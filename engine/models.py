"""The engine's public value types: states, priorities and read-only views of tasks, steps, approvals, events.

Frozen dataclasses rather than pydantic models: they are plain values handed across the facade, and the gateway
keeps its own response models (the OpenAPI contract) and maps from these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class TaskState(StrEnum):
    QUEUED = "queued"  # submitted, no step claimed yet
    RUNNING = "running"  # a step is runnable or running
    WAITING = "waiting"  # parked on a human approval; holds no worker
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # ended by the workflow (approval expired without onExpire)
    REJECTED = "rejected"  # an approval was rejected and the step had no onReject
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"  # retries exhausted or a non-retryable error; replay() resumes it


TERMINAL_TASK_STATES = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.REJECTED, TaskState.CANCELLED, TaskState.DEAD_LETTERED}
)


class StepState(StrEnum):
    RUNNABLE = "runnable"  # waiting for a worker (maybe not before next_run_at)
    RUNNING = "running"  # leased by a worker
    WAITING = "waiting"  # approval pending
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # the task was cancelled or jumped elsewhere (SLA escalation)


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


@dataclass(frozen=True, kw_only=True)
class Task:
    id: str
    tenant: str
    workflow: str
    workflow_version: str
    state: TaskState
    priority: Priority
    #: The submitted input; ``None`` in list results unless payloads were asked for.
    input: Any
    #: Output of the step the task ended with, once it succeeded.
    result: Any
    #: What went wrong, for failed, rejected and dead-lettered tasks: {kind, message, ...}.
    error: dict[str, Any] | None
    #: Values decided by rules steps (``vars`` in CEL).
    vars: dict[str, Any]
    current_step: str | None
    deadline: datetime | None
    sla_breached_at: datetime | None
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    #: Policy annotations as submitted ({privacy, retention, approval}); enforced by Policies.
    annotations: dict[str, Any] | None = None
    #: Called (POST) with the task when it ends.
    callback_url: str | None = None
    submitted_by: str | None = None
    #: The Idempotency-Key of the gateway request that made the task.
    request_key: str | None = None
    #: The region the task's data stays in (submitted with it); None: its workflow's residency pin alone.
    region: str | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_TASK_STATES


@dataclass(frozen=True, kw_only=True)
class StepRun:
    """One visit of a step by a task (a step revisited through a loop gets a new run with a higher ``seq``)."""

    id: str
    task_id: str
    seq: int
    name: str
    type: str
    state: StepState
    attempts: int
    #: Sent to downstreams as ``Idempotency-Key``; the same for every attempt of this run, replays included.
    idempotency_key: str
    output: Any
    error: dict[str, Any] | None
    next_run_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class Decision:
    approver: str
    decision: str  # "approve" | "reject"
    reason: str
    at: datetime


@dataclass(frozen=True, kw_only=True)
class Approval:
    id: str
    task_id: str
    tenant: str
    step: str
    state: ApprovalState
    roles: list[str]
    users: list[str]
    quorum: int
    prompt: str
    decisions: list[Decision]
    expires_at: datetime
    created_at: datetime
    decided_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class Event:
    """An outbox event; ``id`` is a ULID consumers deduplicate on (delivery is at least once)."""

    id: str
    seq: int
    task_id: str | None
    tenant: str | None
    type: str
    payload: dict[str, Any]
    created_at: datetime
    published_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class DeadLetter:
    id: str
    task_id: str
    tenant: str
    step: str
    reason: str
    last_error: dict[str, Any] | None
    created_at: datetime
    replayed_at: datetime | None


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; pass ``next_cursor`` back to get the next one (``None``: this was the last)."""

    items: list[T]
    next_cursor: str | None = None
