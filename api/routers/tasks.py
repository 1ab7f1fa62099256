"""``/v1/tasks``: submit (sync or async, idempotent), read, list, cancel, replay, trace and events of tasks."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from opentelemetry.trace import Span

from api import logmask
from api.auth import Reader, Submitter, check_rate
from api.problems import ProblemError, field_error, problem_responses
from api.schemas import (
    ULID_PATTERN,
    CancelRequest,
    EventList,
    EventView,
    Mode,
    SpanView,
    SubmitTaskRequest,
    TaskPage,
    TaskStateName,
    TaskSummary,
    TaskView,
    TraceView,
    parse_duration,
)
from api.state import Gateway, gateway
from api.store import Principal
from api.telemetry import IDEMPOTENT_REPLAYS, gateway_span
from crds.workflow import WorkflowSpec
from engine import (
    ATTR_TASK_ID,
    Replayed,
    RequestKey,
    StepRun,
    Submission,
    Task,
    WorkflowNotFoundError,
    current_traceparent,
    request_hash,
)

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "Idempotent-Replayed"

TaskId = Annotated[str, Path(alias="taskId", pattern=ULID_PATTERN, description="Task id.")]
GatewayDep = Annotated[Gateway, Depends(gateway)]


async def _run(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking engine call on the thread pool (the trace context goes with it)."""
    return await anyio.to_thread.run_sync(lambda: func(*args, **kwargs))


def _location(gw: Gateway, task_id: str) -> str:
    return f"{gw.settings.public_base_url.rstrip('/')}/v1/tasks/{task_id}"


def _view(gw: Gateway, tenant: str, task: Task) -> TaskView:
    """The full view of a task (blocking: reads its steps)."""
    return TaskView.build(task, gw.engine.steps(tenant, task.id))


def _get_view(gw: Gateway, tenant: str, task_id: str) -> TaskView:
    return _view(gw, tenant, gw.engine.get(tenant, task_id))


# ---------------------------------------------------------------- submit


@router.post(
    "",
    status_code=202,
    response_model=TaskView,
    summary="Submit a task",
    responses={
        200: {"model": TaskView, "description": "mode=sync: the task finished within the wait; here is its result."},
        202: {
            "description": "Accepted: the task runs (mode=async, or mode=sync whose wait ran out); see Location.",
            "headers": {"Location": {"description": "URL of the task.", "schema": {"type": "string"}}},
        },
        **problem_responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
    },
)
async def submit_task(
    *,
    request: Request,
    principal: Submitter,
    gw: GatewayDep,
    body: Annotated[SubmitTaskRequest, Body()],
    mode: Annotated[Mode | None, Query(description="sync: wait for the result; async: answer at once.")] = None,
    wait: Annotated[
        float | None,
        Query(ge=0, description="Seconds a sync request waits at most (capped by the gateway's maximum)."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Makes the submission safe to retry: the same key with the same body returns the first "
            "response; with another body 422; while the first is still being processed 409. At most 255 "
            "characters; kept 24 h per tenant.",
            json_schema_extra={"minLength": 1, "maxLength": MAX_KEY_LENGTH},
        ),
    ] = None,
) -> Response:
    return await accept(gw, request, principal, body, mode=mode, wait=wait, idempotency_key=idempotency_key)


# The route, for the request-duration metric, the access log and the span (labelled by its path template).
SUBMIT_ROUTE = router.routes[-1]


async def accept(
    gw: Gateway,
    request: Request,
    principal: Principal,
    body: SubmitTaskRequest,
    *,
    mode: Mode | None,
    wait: float | None,
    idempotency_key: str | None,
) -> Response:
    """Submit a task for an authenticated submitter (the route and ``api.fast_submit`` both answer with this)."""
    tenant = principal.tenant
    logmask.bind(workflow=body.workflow.name, data=body.input)
    await check_rate(gw, tenant, body.priority)
    _check_key(idempotency_key)
    deadline = _deadline(body)
    sync = (mode or body.mode or "async") == "sync"
    timeout = min(wait if wait is not None else gw.settings.sync_wait_default, gw.settings.sync_wait_max)

    with gateway_span(request, "submit", tenant=tenant) as span:
        span.set_attribute("aiplane.workflow", body.workflow.name)
        answered: list[TaskView] = []
        request_key = None
        if idempotency_key is not None:
            # An async answer is known before anything is written, so the key is stored already answered, in the
            # task's own transaction; a sync answer comes after the wait, so its key stays in flight until then.
            def respond(task: Task, steps: list[StepRun]) -> dict[str, Any]:
                answered.append(TaskView.build(task, steps))
                return _stored(gw, 202, answered[0])

            request_key = RequestKey(
                key=idempotency_key,
                fingerprint=request_hash(body.model_dump(mode="json", by_alias=True)),
                respond=None if sync else respond,
            )

        # Tenant access and residency are the engine's intake's (policies.admission), as for a Kafka source's tasks.
        def validate(version: str, spec: WorkflowSpec) -> None:
            gw.validators.check(body.workflow.name, version, spec.input_schema, body.input)

        outcome = await gw.submissions.submit(
            Submission(
                tenant=tenant,
                workflow=body.workflow.name,
                version=body.workflow.version,
                input=body.input,
                priority=body.priority,
                deadline=deadline,
                request=request_key,
                annotations=body.policy.model_dump(mode="json", by_alias=True, exclude_none=True)
                if body.policy is not None
                else None,
                callback_url=str(body.callback_url) if body.callback_url is not None else None,
                submitted_by=principal.name,
                trace_context=current_traceparent(),
                region=body.region,
                validate=validate,
            )
        )
        if isinstance(outcome, Replayed):
            return _replayed(request, span, outcome.response)
        if isinstance(outcome, Exception):
            raise _refusal(outcome, body)
        task = outcome.task
        span.set_attribute(ATTR_TASK_ID, task.id)
        request.state.task_id = task.id
        if sync:
            status, view = await _answer_sync(gw, tenant, task, key=idempotency_key, wait=timeout)
        else:
            status, view = 202, answered[0] if answered else TaskView.build(task, outcome.steps)
        span.set_attribute("aiplane.task.state", view.state)
        return Response(
            view.model_dump_json(by_alias=True),
            status_code=status,
            media_type="application/json",
            headers={"Location": _location(gw, task.id)},
        )


def _refusal(error: Exception, body: SubmitTaskRequest) -> Exception:
    """The error to raise for a refused submission (engine errors become problems in ``api.problems``)."""
    if isinstance(error, WorkflowNotFoundError):
        ref = body.workflow
        field = "workflow.name" if ref.version is None else "workflow.version"
        return ProblemError(
            404,
            "workflow-not-found",
            f"{error.detail}; check workflow.name (and workflow.version), or apply the Workflow first",
            errors=[field_error(field, error.detail)],
            workflow=ref.name,
        )
    return error


def _check_key(key: str | None) -> None:
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ProblemError(
            400,
            "idempotency-key-invalid",
            f"the Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} characters long (it has {len(key)}); use a UUID",
            errors=[field_error("Idempotency-Key", f"must be 1-{MAX_KEY_LENGTH} characters", "header")],
        )


def _deadline(body: SubmitTaskRequest) -> datetime | timedelta | None:
    if body.deadline is not None and body.sla is not None:
        raise ProblemError(
            422,
            "validation-failed",
            "give either deadline or sla, not both",
            errors=[field_error("sla", "deadline is given too; drop one of them")],
        )
    if body.deadline is not None:
        if body.deadline <= datetime.now(UTC):
            raise ProblemError(
                422,
                "validation-failed",
                "the deadline is in the past; give a future time (RFC 3339 with offset) or an sla duration",
                errors=[field_error("deadline", "must be in the future")],
            )
        return body.deadline.astimezone(UTC)
    if body.sla is not None:
        return parse_duration(body.sla)
    return None


def _replayed(request: Request, span: Span, stored: Any) -> JSONResponse:
    """The stored first response of an Idempotency-Key, as it was."""
    IDEMPOTENT_REPLAYS.inc()
    stored = stored if isinstance(stored, dict) else {}
    body = stored.get("body")
    task_id = body.get("id") if isinstance(body, dict) else None
    if isinstance(task_id, str):
        span.set_attribute(ATTR_TASK_ID, task_id)
        request.state.task_id = task_id
    headers = {**stored.get("headers", {}), REPLAYED_HEADER: "true"}
    return JSONResponse(body, status_code=int(stored.get("status", 200)), headers=headers)


async def _answer_sync(gw: Gateway, tenant: str, task: Task, *, key: str | None, wait: float) -> tuple[int, TaskView]:
    """Wait for the result, then store the answer under the key (which stayed in flight until now)."""
    status = 202
    view: TaskView | None = None
    try:
        task = await _wait(gw, tenant, task.id, wait)
        status = 200 if task.done else 202
        view = await _run(_view, gw, tenant, task)
    finally:
        # Once the task exists, the key's answer is this task: store one even if we were interrupted.
        if key is not None:
            if view is None:
                status, stored = 202, TaskView.build(task, [])
            else:
                stored = view
            with anyio.CancelScope(shield=True):
                await _run(gw.idempotency.complete, tenant, key, _stored(gw, status, stored))
    assert view is not None
    return status, view


def _stored(gw: Gateway, status: int, view: TaskView) -> dict[str, Any]:
    return {
        "status": status,
        "body": view.model_dump(mode="json", by_alias=True),
        "headers": {"Location": _location(gw, view.id)},
    }


async def _wait(gw: Gateway, tenant: str, task_id: str, timeout: float) -> Task:
    """Poll the store (without holding a thread between looks) until the task is done or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    interval = gw.settings.sync_poll_interval
    while True:
        task: Task = await _run(gw.engine.get, tenant, task_id)
        left = deadline - time.monotonic()
        if task.done or left <= 0:
            return task
        await anyio.sleep(min(interval, left))


# ---------------------------------------------------------------- read


@router.get(
    "",
    response_model=TaskPage,
    summary="List tasks",
    responses=problem_responses(401, 403, 422),
)
async def list_tasks(
    *,
    request: Request,
    principal: Reader,
    gw: GatewayDep,
    state: Annotated[TaskStateName | None, Query(description="Only tasks in this state.")] = None,
    workflow: Annotated[str | None, Query(max_length=63, description="Only tasks of this workflow.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size.")] = 50,
    cursor: Annotated[str | None, Query(pattern=ULID_PATTERN, description="nextCursor of the previous page.")] = None,
) -> TaskPage:
    with gateway_span(request, "list_tasks", tenant=principal.tenant):
        page = await _run(gw.engine.list, principal.tenant, state=state, workflow=workflow, limit=limit, cursor=cursor)
    return TaskPage(items=[TaskSummary.of(t) for t in page.items], next_cursor=page.next_cursor)


@router.get(
    "/{taskId}",
    response_model=TaskView,
    summary="Get a task: state, steps, result, errors",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_task(*, request: Request, task_id: TaskId, principal: Reader, gw: GatewayDep) -> TaskView:
    request.state.task_id = task_id
    with gateway_span(request, "get_task", tenant=principal.tenant):
        view: TaskView = await _run(_get_view, gw, principal.tenant, task_id)
    return view


@router.post(
    "/{taskId}/cancel",
    response_model=TaskView,
    summary="Cancel a task",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def cancel_task(
    *,
    request: Request,
    task_id: TaskId,
    principal: Submitter,
    gw: GatewayDep,
    body: Annotated[CancelRequest | None, Body()] = None,
) -> TaskView:
    request.state.task_id = task_id
    reason = body.reason if body is not None else "cancelled"
    with gateway_span(request, "cancel", task_id=task_id, tenant=principal.tenant):
        task = await _run(gw.engine.cancel, principal.tenant, task_id, f"{reason} (by {principal.name})")
        view: TaskView = await _run(_view, gw, principal.tenant, task)
    return view


@router.post(
    "/{taskId}/replay",
    response_model=TaskView,
    summary="Replay a dead-lettered task from its failed step",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def replay_task(*, request: Request, task_id: TaskId, principal: Submitter, gw: GatewayDep) -> TaskView:
    request.state.task_id = task_id
    with gateway_span(request, "replay", task_id=task_id, tenant=principal.tenant):
        task = await _run(gw.engine.replay, principal.tenant, task_id)
        view: TaskView = await _run(_view, gw, principal.tenant, task)
    return view


@router.get(
    "/{taskId}/events",
    response_model=EventList,
    summary="The task's timeline",
    responses=problem_responses(401, 403, 404, 422),
)
async def task_events(
    *,
    request: Request,
    task_id: TaskId,
    principal: Reader,
    gw: GatewayDep,
    after: Annotated[int, Query(ge=0, le=2**62, description="Only events after this seq.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many events.")] = 1000,
) -> EventList:
    request.state.task_id = task_id
    with gateway_span(request, "events", tenant=principal.tenant):
        events = await _run(gw.engine.events, task_id, tenant=principal.tenant, after_seq=after, limit=limit)
    return EventList(task_id=task_id, items=[EventView.of(e) for e in events])


@router.get(
    "/{taskId}/trace",
    response_model=TraceView,
    summary="The task's OpenTelemetry spans (gateway, engine, steps, model and connector calls)",
    responses=problem_responses(401, 403, 404, 422),
)
async def task_trace(*, request: Request, task_id: TaskId, principal: Reader, gw: GatewayDep) -> TraceView:
    request.state.task_id = task_id
    # Checked first: another tenant's task is not found, whatever the span store holds.
    await _run(gw.engine.get, principal.tenant, task_id)
    spans = [_span(s) for s in gw.spans.trace(task_id)]
    trace_ids = list(dict.fromkeys(s.trace_id for s in spans if s.trace_id))
    return TraceView(task_id=task_id, trace_ids=trace_ids, spans=spans)


def _span(raw: dict[str, Any]) -> SpanView:
    return SpanView(
        name=str(raw.get("name", "")),
        trace_id=raw.get("traceId"),
        span_id=raw.get("spanId"),
        parent_span_id=raw.get("parentSpanId"),
        start_time_unix_nano=raw.get("startTimeUnixNano"),
        end_time_unix_nano=raw.get("endTimeUnixNano"),
        attributes={k: list(v) if isinstance(v, tuple) else v for k, v in (raw.get("attributes") or {}).items()},
        status=str(raw.get("status", "UNSET")),
    )
