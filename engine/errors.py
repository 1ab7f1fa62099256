"""Errors the engine raises to its callers, and the errors step executors raise to the engine.

Caller-facing errors carry ``http_status`` and a short ``type`` slug so the gateway can map them to RFC 9457
problem details without a table of its own; ``detail`` says what to fix.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar


class EngineError(Exception):
    """Base of every error the engine facade raises."""

    http_status: ClassVar[int] = 500
    type: ClassVar[str] = "engine-error"

    def __init__(self, detail: str, **fields: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        #: Extra facts for the problem document (e.g. the offending field, the task id).
        self.fields = fields


class NotFoundError(EngineError):
    http_status = 404
    type = "not-found"


class WorkflowNotFoundError(NotFoundError):
    type = "workflow-not-found"


class TaskNotFoundError(NotFoundError):
    type = "task-not-found"


class ApprovalNotFoundError(NotFoundError):
    type = "approval-not-found"


class InvalidRequestError(EngineError):
    """The request cannot be served as written (unknown priority, invalid workflow, bad input)."""

    http_status = 422
    type = "invalid-request"


class InvalidStateError(EngineError):
    """The operation does not apply to the object's current state (e.g. replaying a running task)."""

    http_status = 409
    type = "invalid-state"


class NotAuthorizedError(EngineError):
    """The caller may not take this decision (not among an approval's approvers)."""

    http_status = 403
    type = "not-authorized"


class SeparationOfDutiesError(NotAuthorizedError):
    """The approver submitted the task, and its approval step asks for separation of duties."""

    type = "separation-of-duties"


class PolicyDeniedError(EngineError):
    """A Policy refuses the submission (``policies.admission``); ``type`` is the denial's reason, e.g.
    ``tenant-denied`` or ``residency-denied``, and the problem type and dead-letter reason alike."""

    http_status = 403
    type = "policy-denied"

    def __init__(self, detail: str, *, reason: str, policies: tuple[str, ...] = (), **fields: Any) -> None:
        super().__init__(detail, **fields)
        self.type = reason  # type: ignore[misc]  # per instance: one error class for every denial reason
        #: The Policy versions that denied (for the audit log, not the problem document).
        self.policies = policies


class QuotaExceededError(EngineError):
    """The tenant holds as many unfinished tasks as its Policies' quota allows (``policies.quota``)."""

    http_status = 429
    type = "quota-exceeded"
    #: Seconds a client should wait before trying again: tasks finish at the workflow's pace, not the limiter's.
    retry_after = 5


class IdempotencyMismatchError(EngineError):
    """The idempotency key was used before with a different request body."""

    http_status = 422
    type = "idempotency-key-mismatch"


class IdempotencyConflictError(EngineError):
    """A request with this idempotency key is still being processed."""

    http_status = 409
    type = "idempotency-key-in-flight"


class StepError(Exception):
    """A step attempt failed. ``kind`` names the error (matched against ``retry.nonRetryable``).

    ``retryable`` is the executor's classification (e.g. HTTP 4xx other than 408/429 is not); ``retry_after``
    is a lower bound the downstream asked for (HTTP ``Retry-After``).
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: timedelta | None = None,
        policies: tuple[str, ...] = (),
    ) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        #: The Policy versions that refused the call (a policy denial's audit record names them).
        self.policies = policies

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "message": self.message, "retryable": self.retryable}
        if self.status is not None:
            out["status"] = self.status
        return out


class StepDeferredError(Exception):
    """The attempt did not call the downstream at all (circuit open, retry budget spent): try again later.

    Unlike ``StepError`` this does not use up an attempt; the step waits ``delay`` and is claimed again.
    """

    def __init__(self, reason: str, delay: timedelta) -> None:
        super().__init__(f"deferred for {delay.total_seconds():.3f}s: {reason}")
        self.reason = reason
        self.delay = delay
