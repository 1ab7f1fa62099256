"""The durable workflow engine: tasks, steps, store, workers, retries, dead letters, events.

The gateway, the CLI and tests use ``Engine`` (see ``engine.facade``) and the value types re-exported here.
"""

from engine.bus import Bus, InMemoryBus, OutboxRelay
from engine.durations import parse_duration
from engine.errors import (
    ApprovalNotFoundError,
    EngineError,
    IdempotencyConflictError,
    IdempotencyMismatchError,
    InvalidRequestError,
    InvalidStateError,
    NotAuthorizedError,
    NotFoundError,
    StepDeferredError,
    StepError,
    TaskNotFoundError,
    WorkflowNotFoundError,
)
from engine.executors.resolvers import (
    ConnectorResolver,
    ModelResolver,
    SecretResolver,
    StaticConnectorResolver,
    StaticModelResolver,
    StaticSecretResolver,
    pick_endpoint,
)
from engine.facade import Engine
from engine.models import (
    Approval,
    ApprovalState,
    DeadLetter,
    Decision,
    Event,
    Page,
    Priority,
    StepRun,
    StepState,
    Task,
    TaskState,
)
from engine.payloads import BlobStore, FileBlobStore
from engine.runtime.intake import Accepted, Outcome, Replayed, RequestKey, Submission
from engine.runtime.queue import PriorityPolicy
from engine.sinks import InMemorySink, Record, RecordSink
from engine.store.idempotency import Claim, IdempotencyStore, request_hash
from engine.store.ratelimit import RateBudgetStore
from engine.tracing import ATTR_TASK_ID, TaskSpanStore, current_traceparent
from engine.worker import Worker, WorkerConfig

__all__ = [
    "ATTR_TASK_ID",
    "Accepted",
    "Approval",
    "ApprovalNotFoundError",
    "ApprovalState",
    "BlobStore",
    "Bus",
    "Claim",
    "ConnectorResolver",
    "DeadLetter",
    "Decision",
    "Engine",
    "EngineError",
    "Event",
    "FileBlobStore",
    "IdempotencyConflictError",
    "IdempotencyMismatchError",
    "IdempotencyStore",
    "InMemoryBus",
    "InMemorySink",
    "InvalidRequestError",
    "InvalidStateError",
    "ModelResolver",
    "NotAuthorizedError",
    "NotFoundError",
    "OutboxRelay",
    "Outcome",
    "Page",
    "Priority",
    "PriorityPolicy",
    "RateBudgetStore",
    "Record",
    "RecordSink",
    "Replayed",
    "RequestKey",
    "SecretResolver",
    "StaticConnectorResolver",
    "StaticModelResolver",
    "StaticSecretResolver",
    "StepDeferredError",
    "StepError",
    "StepRun",
    "StepState",
    "Submission",
    "Task",
    "TaskNotFoundError",
    "TaskSpanStore",
    "TaskState",
    "Worker",
    "WorkerConfig",
    "WorkflowNotFoundError",
    "current_traceparent",
    "parse_duration",
    "pick_endpoint",
    "request_hash",
]
