"""Request and response models: the OpenAPI contract of the gateway.

camelCase on the wire (like the CRDs and the trace documents), snake_case in Python; unknown request fields are
refused so that a misspelt field fails loudly instead of being ignored. Times are RFC 3339 in UTC.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from api.problems import ProblemError, field_error
from crds.base import DNS_LABEL_PATTERN, Duration, Name
from engine import Approval, DeadLetter, Event, StepRun, Task
from engine import parse_duration as parse_go_duration

# Ids are ULIDs (26 characters of Crockford's base 32); anything else cannot name a task or an approval.
ULID_PATTERN = r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"
MAX_SLA = timedelta(days=366)

Priority = Literal["high", "normal", "low"]
Mode = Literal["sync", "async"]
TaskStateName = Literal["queued", "running", "waiting", "succeeded", "failed", "rejected", "cancelled", "dead_lettered"]
StepStateName = Literal["runnable", "running", "waiting", "succeeded", "failed", "cancelled"]
ApprovalStateName = Literal["pending", "approved", "rejected", "expired", "cancelled"]


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class RequestModel(ApiModel):
    """A request body: plain JSON all the way down. Python's JSON parser also takes ``NaN``, ``Infinity`` and
    ``\\ud800``-style lone surrogates, which are not JSON and which the store and downstream calls cannot carry."""

    @model_validator(mode="before")
    @classmethod
    def _plain_json(cls, data: Any) -> Any:
        found = _not_plain_json(data)
        if found is not None:
            # Raised as a problem rather than a ValueError, so that it names the field, not just "body".
            where, what = found
            raise ProblemError(
                422,
                "validation-failed",
                f"the request is invalid; fix {where or 'the body'}: {what}",
                errors=[field_error(where or "body", what)],
            )
        return data


def _not_plain_json(value: Any) -> tuple[str, str] | None:
    """(dotted path, what is wrong) of the first value JSON cannot carry, or None."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return path, "text is not valid Unicode (it has a lone surrogate)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return path, "numbers must be finite (no NaN or Infinity)"
        elif isinstance(item, dict):
            for key, child in item.items():
                name = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and not _encodable(key):
                    return path, "a key is not valid Unicode (it has a lone surrogate)"
                stack.append((child, name))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------- durations

_ISO_DURATION = TypeAdapter(timedelta)


def parse_duration(text: str) -> timedelta:
    """``30s``, ``1h30m``, ``2d`` (as in the CRDs) or ISO 8601 (``PT5M``); raises ValueError otherwise."""
    try:
        go_style: timedelta | None = parse_go_duration(text)
    except ValueError:
        go_style = None  # not the CRDs' form; maybe ISO 8601
    if go_style is not None:
        if go_style > MAX_SLA:
            raise ValueError(f"must be at most {MAX_SLA.days} days")
        return go_style
    if text[:1] in ("P", "p", "-"):
        try:
            value = _ISO_DURATION.validate_python(text)
        except ValueError:
            pass
        else:
            if value > MAX_SLA:
                raise ValueError(f"must be at most {MAX_SLA.days} days")
            return value
    raise ValueError("must be a duration such as 30s, 5m, 1h30m, 2d or ISO 8601 PT5M")


# ---------------------------------------------------------------- requests


class WorkflowRef(ApiModel):
    """Which workflow to run."""

    name: Name = Field(description="Name of the Workflow.")
    version: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$",
        description="A registered version of it; omit for the current one.",
    )


class PolicyAnnotations(ApiModel):
    """What the submitter declares about the task's data; stored with the task, enforced by policies."""

    privacy: Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)] | None = Field(
        default=None,
        description="Data class of the input (as the aiplane.io/data-class label), e.g. pii or claims.",
    )
    retention: Duration | None = Field(
        default=None,
        description="Keep the task's data at most this long after it finished, e.g. 30d: its input, result, step "
        "outputs, published events and payload logs are then purged. Only narrows the Policies' retention: a "
        "shorter Policy period still applies first.",
    )
    approval: Literal["policy", "required", "skip-if-allowed"] | None = Field(
        default=None,
        description="policy: as the Policies decide (default). required: a human approves the task before it "
        "succeeds in any case: where no approval of it was approved yet it waits for one of the approver role, and "
        "a Policy approval rule it triggers asks a human itself even where a workflow approval step would meet it. "
        "skip-if-allowed: skip approvals where the Policies allow it; no Policy allows skipping one today, so it is "
        "the same as policy: a submitter never bypasses a human gate.",
    )
    subject: Annotated[str, Field(min_length=1, max_length=253)] | None = Field(
        default=None,
        description="The data subject the task's data is about (e.g. a customer id): an erasure request for this id "
        "(aiplane erase --subject) removes the task and everything kept from it.",
    )


class SubmitTaskRequest(RequestModel):
    """A task to run."""

    workflow: WorkflowRef = Field(description="The workflow to run.")
    input: dict[str, Any] = Field(
        default_factory=dict, description="The task's input; must match the workflow's inputSchema."
    )
    priority: Priority = Field(default="normal", description="Queue priority class.")
    deadline: AwareDatetime | None = Field(
        default=None, description="When the task must be done (RFC 3339 with offset); overrides the workflow's SLA."
    )
    sla: str | None = Field(
        default=None,
        max_length=64,
        description="Time from now by which the task must be done, e.g. 30s, 1h30m, 2d or PT5M; "
        "an alternative to deadline.",
    )
    mode: Mode | None = Field(
        default=None, description="sync: wait for the result; async (default): answer at once. ?mode= overrides it."
    )
    policy: PolicyAnnotations | None = Field(default=None, description="Policy annotations of the task.")
    callback_url: AnyHttpUrl | None = Field(
        default=None, description="URL told about the task's completion (stored; delivery comes later)."
    )
    region: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="The region the task's data stays in: its model and connector calls go only to systems in this "
        "region. It may narrow the regions its workflow's residency Policies allow, never widen them (a region "
        "outside them is refused with 422 naming the allowed ones); omit it to follow the workflow's regions.",
    )

    @field_validator("sla")
    @classmethod
    def _sla_is_a_duration(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) <= timedelta(0):
            raise ValueError("must be longer than zero")
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback_url_not_too_long(cls, value: AnyHttpUrl | None) -> AnyHttpUrl | None:
        if value is not None and len(str(value)) > 2048:
            raise ValueError("must be at most 2048 characters")
        return value


class CancelRequest(RequestModel):
    reason: str = Field(default="cancelled", min_length=1, max_length=1024, description="Why, for the audit trail.")


class ApproveRequest(RequestModel):
    approver: str | None = Field(
        default=None,
        max_length=253,
        description="Who decides; must be the authenticated principal (the default) when given.",
    )
    reason: str = Field(default="", max_length=4096, description="Why (optional for an approval).")


class RejectRequest(RequestModel):
    approver: str | None = Field(
        default=None,
        max_length=253,
        description="Who decides; must be the authenticated principal (the default) when given.",
    )
    reason: str = Field(min_length=1, max_length=4096, description="Why the task is rejected.")


# ---------------------------------------------------------------- responses


class StepView(ApiModel):
    """One visit of a step by the task."""

    seq: int = Field(description="Order in which the steps were entered (a loop revisits a step with a new seq).")
    name: str
    type: str
    state: StepStateName
    attempts: int = Field(description="Attempts started so far.")
    output: Any = Field(default=None, description="The step's output once it succeeded.")
    error: dict[str, Any] | None = Field(default=None, description="The last error: {kind, message, ...}.")
    next_run_at: datetime | None = Field(default=None, description="Earliest time of the next attempt.")
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def of(cls, run: StepRun) -> StepView:
        # Constructed, not validated: the engine's values are already what the fields declare, and validating
        # them was a measurable share of answering a submission (benchmarks/bench_submit).
        return cls.model_construct(
            seq=run.seq,
            name=run.name,
            type=run.type,
            state=run.state.value,
            attempts=run.attempts,
            output=run.output,
            error=run.error,
            next_run_at=run.next_run_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
        )


class TaskSummary(ApiModel):
    """A task without its payloads (as listed)."""

    id: str = Field(description="Task id (a ULID: sortable by submission time).")
    workflow: str
    workflow_version: str
    state: TaskStateName
    priority: Priority
    current_step: str | None = Field(default=None, description="The step the task is at.")
    error: dict[str, Any] | None = Field(
        default=None, description="What went wrong, for failed, rejected and dead-lettered tasks."
    )
    deadline: datetime | None = None
    sla_breached_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None

    @staticmethod
    def fields_of(task: Task) -> dict[str, Any]:
        return {
            "id": task.id,
            "workflow": task.workflow,
            "workflow_version": task.workflow_version,
            "state": task.state.value,
            "priority": task.priority.value,
            "current_step": task.current_step,
            "error": task.error,
            "deadline": task.deadline,
            "sla_breached_at": task.sla_breached_at,
            "created_at": task.created_at,
            "updated_at": task.updated_at,
            "finished_at": task.finished_at,
        }

    @classmethod
    def of(cls, task: Task) -> TaskSummary:
        return cls.model_construct(**cls.fields_of(task))


class TaskView(TaskSummary):
    """A task with its input, result, decided values and steps."""

    input: Any = Field(default=None, description="The submitted input.")
    result: Any = Field(default=None, description="Output of the step the task ended with, once it succeeded.")
    vars: dict[str, Any] = Field(default_factory=dict, description="Values decided by rules steps.")
    idempotency_key: str | None = None
    steps: list[StepView] = Field(default_factory=list, description="Step runs in the order they were entered.")
    policy: PolicyAnnotations | None = Field(default=None, description="Policy annotations given at submission.")
    callback_url: str | None = None
    region: str | None = Field(
        default=None, description="The region the task's data stays in, when it was submitted with one."
    )

    @classmethod
    def build(cls, task: Task, steps: list[StepRun]) -> TaskView:
        return cls.model_construct(
            **cls.fields_of(task),
            input=task.input,
            result=task.result,
            vars=task.vars,
            idempotency_key=task.request_key or task.idempotency_key,
            steps=[StepView.of(s) for s in steps],
            policy=PolicyAnnotations.model_validate(task.annotations) if task.annotations else None,
            callback_url=task.callback_url,
            region=task.region,
        )


class TaskPage(ApiModel):
    items: list[TaskSummary]
    next_cursor: str | None = Field(default=None, description="Pass as ?cursor= for the next page; null at the end.")


class DecisionView(ApiModel):
    approver: str
    decision: Literal["approve", "reject"]
    reason: str
    at: datetime


class ApprovalView(ApiModel):
    """A human gate of a task."""

    id: str
    task_id: str
    step: str
    state: ApprovalStateName
    roles: list[str] = Field(description="Roles whose members may decide.")
    users: list[str] = Field(description="Named users who may decide besides the roles.")
    quorum: int
    prompt: str
    decisions: list[DecisionView]
    expires_at: datetime
    created_at: datetime
    decided_at: datetime | None = None

    @classmethod
    def of(cls, approval: Approval) -> ApprovalView:
        return cls(
            id=approval.id,
            task_id=approval.task_id,
            step=approval.step,
            state=approval.state.value,
            roles=approval.roles,
            users=approval.users,
            quorum=approval.quorum,
            prompt=approval.prompt,
            decisions=[
                DecisionView(
                    approver=d.approver,
                    decision="approve" if d.decision == "approve" else "reject",
                    reason=d.reason,
                    at=d.at,
                )
                for d in approval.decisions
            ],
            expires_at=approval.expires_at,
            created_at=approval.created_at,
            decided_at=approval.decided_at,
        )


class ApprovalPage(ApiModel):
    items: list[ApprovalView]
    next_cursor: str | None = Field(default=None, description="Pass as ?cursor= for the next page; null at the end.")


class EventView(ApiModel):
    """One entry of a task's timeline."""

    id: str = Field(description="Event id (a ULID); consumers of the bus deduplicate on it.")
    seq: int = Field(description="Position in the timeline; pass the last one seen as ?after= to follow along.")
    type: str = Field(description="e.g. task.submitted, step.started, step.completed, task.completed.")
    payload: dict[str, Any]
    created_at: datetime
    published_at: datetime | None = None

    @classmethod
    def of(cls, event: Event) -> EventView:
        return cls(
            id=event.id,
            seq=event.seq,
            type=event.type,
            payload=event.payload,
            created_at=event.created_at,
            published_at=event.published_at,
        )


class EventList(ApiModel):
    task_id: str
    items: list[EventView]


class SpanView(ApiModel):
    """An OpenTelemetry span of the task (gateway, engine, step, model or connector call)."""

    name: str
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    start_time_unix_nano: int | None = None
    end_time_unix_nano: int | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    status: str


class TraceView(ApiModel):
    task_id: str
    trace_ids: list[str] = Field(description="Trace ids the spans belong to (one, unless the task was replayed).")
    spans: list[SpanView]


class DeadLetterView(ApiModel):
    id: str
    task_id: str
    step: str
    reason: str
    last_error: dict[str, Any] | None = None
    created_at: datetime
    replayed_at: datetime | None = None

    @classmethod
    def of(cls, dead: DeadLetter) -> DeadLetterView:
        return cls(
            id=dead.id,
            task_id=dead.task_id,
            step=dead.step,
            reason=dead.reason,
            last_error=dead.last_error,
            created_at=dead.created_at,
            replayed_at=dead.replayed_at,
        )


class DeadLetterPage(ApiModel):
    items: list[DeadLetterView]
    next_cursor: str | None = None


class Health(ApiModel):
    status: Literal["ok"] = "ok"
