"""``GET /v1/tasks/{taskId}/agent-decisions``: what a task's agent steps proposed, what was decided and why, and
what each action did: the decision records an auditor replays an agent's run from (``engine.agent``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

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


class AgentDecision(ApiModel):
    """One planner proposal of an agent step, the decision about it, and its action's outcome."""

    step_name: str = Field(description="The agent step.")
    step: int = Field(description="1-based number of the proposal within the step.")
    action: str | None = Field(description="The action proposed; null when the planner was done or escalated.")
    arguments: dict[str, Any] = Field(description="The proposed arguments.")
    confidence: float = Field(description="The planner's confidence, 0-1.")
    reasoning: str = Field(description="The planner's reasoning.")
    decision: Literal["allowed", "denied", "invalid", "done", "escalated", "limit"]
    reason: str = Field(description="Why: the policy rule, the schema problem, the limit or the escalation.")
    policies: list[str] = Field(
        description="Policy versions behind the decision (namespace/name@version: its generation, or a file "
        "Policy's content digest)."
    )
    state: Literal["running", "succeeded", "failed", "denied", "invalid", "done", "escalated", "limit"]
    cost: float = Field(description="Model-call units spent: the planner call and, once run, the action.")
    attempts: int = Field(description="Attempts of the action.")
    observation: Any = Field(default=None, description="The action's output, when it succeeded.")
    error: dict[str, Any] | None = Field(default=None, description="The action's last error, when it failed.")
    child_task_id: str | None = Field(default=None, description="A workflow action's child task.")
    result: Any = Field(default=None, description="With decision done: what the agent achieved.")
    created_at: datetime
    finished_at: datetime | None


class AgentDecisions(ApiModel):
    items: list[AgentDecision]


@router.get(
    "/{taskId}/agent-decisions",
    response_model=AgentDecisions,
    summary="The decision records of the task's agent steps",
    responses=problem_responses(401, 403, 404, 422),
)
async def agent_decisions(
    *, request: Request, task_id: TaskId, principal: Reader, gw: Annotated[Gateway, Depends(gateway)]
) -> AgentDecisions:
    request.state.task_id = task_id
    with gateway_span(request, "agent_decisions", tenant=principal.tenant):
        found = await anyio.to_thread.run_sync(lambda: gw.engine.agent_decisions(principal.tenant, task_id))
    return AgentDecisions.model_validate({"items": found})
