"""The planner contract: what an agent step sends its planner Model and what the planner answers.

A planner is any BentoML service with an API (``plan`` by default) that takes a ``PlanRequest`` as its JSON body
and returns a ``PlanResponse``. The engine calls it once per proposal with the step idempotency key of that
proposal, so an LLM-backed planner can cache its answer by key; it checks every proposal itself (the action
exists, the arguments match the action's schema, policy allows it), so a planner never has to be trusted.

The same classes are the engine's request and response models and the shipped planners' (``planners/``), and
docs/planners.md describes them field by field: one source of truth, like the CRDs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

#: What became of a proposal, as the planner sees it in the transcript.
Outcome = Literal["succeeded", "failed", "denied", "invalid"]


class PlannerModel(BaseModel):
    """camelCase on the wire like the CRDs; unknown fields are ignored, so either side may add fields first."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class ActionSpec(PlannerModel):
    """An action the agent may take, as the planner sees it."""

    name: str = Field(description="Name to propose it by.")
    description: str = Field(description="What it does and when it helps.")
    kind: Literal["model", "connector", "workflow"] = Field(description="What it calls.")
    input_schema: dict[str, Any] = Field(description="JSON Schema its arguments must match.")
    cost: float = Field(description="What one run spends of the budget.")


class TranscriptEntry(PlannerModel):
    """One proposal and what came of it."""

    step: int = Field(ge=1, description="1-based number of the proposal.")
    action: str = Field(description="The action proposed.")
    arguments: dict[str, Any] = Field(default_factory=dict, description="Its arguments.")
    confidence: float = Field(description="The planner's confidence in it.")
    reasoning: str = Field(default="", description="Why the planner proposed it.")
    outcome: Outcome = Field(description="succeeded, failed (after its retries), denied (policy) or invalid.")
    observation: Any = Field(default=None, description="The action's output when it succeeded.")
    error: str | None = Field(default=None, description="Why it failed, was denied or was invalid.")


class Budget(PlannerModel):
    """What is left of the agent's limits."""

    steps_left: int = Field(description="Proposals left.")
    cost_left: float = Field(description="Cost left, in model-call units.")
    seconds_left: float = Field(description="Wall-clock seconds left.")


class PlanRequest(PlannerModel):
    """The engine's question: given the goal, the state and what happened so far, what next?"""

    goal: str = Field(description="The goal, rendered from the step's template.")
    state: Any = Field(default=None, description="What the step's state expressions give (or the task input).")
    actions: list[ActionSpec] = Field(description="What the agent may do.")
    transcript: list[TranscriptEntry] = Field(default_factory=list, description="Earlier proposals, in order.")
    budget: Budget = Field(description="What is left of the limits.")
    config: dict[str, Any] = Field(default_factory=dict, description="The step's planner.config, as is.")


class PlanResponse(PlannerModel):
    """The planner's answer: an action with arguments, or done with a result, or a request for a human."""

    action: str | None = Field(default=None, description="Name of the action to run next; omit when done.")
    arguments: dict[str, Any] = Field(default_factory=dict, description="The action's arguments.")
    done: bool = Field(default=False, description="The goal is reached; result is the agent's output.")
    result: Any = Field(default=None, description="With done: what the agent achieved.")
    escalate: bool = Field(default=False, description="Hand over to a human now (the planner is stuck).")
    confidence: float = Field(default=1.0, ge=0, le=1, description="How sure the planner is, 0-1.")
    reasoning: str = Field(default="", max_length=8192, description="Why; recorded for auditors.")
