"""``GET /v1/tasks/{taskId}/lineage``: what produced a task's result, for auditors (``policies.lineage``)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Path, Request
from pydantic import Field

from api.auth import Reader
from api.problems import problem_responses
from api.schemas import ULID_PATTERN, ApiModel
from api.state import Gateway, gateway
from api.telemetry import gateway_span

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
TaskId = Annotated[str, Path(alias="taskId", pattern=ULID_PATTERN, description="Task id.")]


class StepDecision(ApiModel):
    """One step run and its decision record."""

    name: str
    type: str
    seq: int
    state: str
    decision: dict[str, Any] = Field(
        description="model: name, version, endpoint, and scores/explanation when the model returns them; "
        "connector: its name; rules: vars and next; approval: decision and approvers."
    )


class WorkflowRef(ApiModel):
    name: str
    version: str = Field(description="Content hash of the workflow spec the task ran.")


class LineageView(ApiModel):
    """Which workflow version, input, Policy versions, models and connectors produced the task's result."""

    task_id: str
    workflow: WorkflowRef
    input_hash: str | None = Field(description="sha256 of the stored input (canonical JSON); null once purged.")
    region: str | None = Field(
        default=None, description="The region the task's data stayed in, when submitted with one; null: its workflow's."
    )
    policies: list[str] = Field(
        description="Policy versions (namespace/name@version: its generation, or a file Policy's content digest) "
        "that decided on it."
    )
    steps: list[StepDecision]


@router.get(
    "/{taskId}/lineage",
    response_model=LineageView,
    summary="The task's lineage and decision records",
    responses=problem_responses(401, 403, 404, 422),
)
async def task_lineage(
    *, request: Request, task_id: TaskId, principal: Reader, gw: Annotated[Gateway, Depends(gateway)]
) -> LineageView:
    request.state.task_id = task_id
    with gateway_span(request, "lineage", tenant=principal.tenant):
        found = await anyio.to_thread.run_sync(lambda: gw.engine.lineage(principal.tenant, task_id))
    return LineageView.model_validate(found)
