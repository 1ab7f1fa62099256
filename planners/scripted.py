"""The scripted planner: declarative rules in the step's ``planner.config``; the first rule whose ``when`` holds
gives the next proposal.

::

    {"rules": [
        {"when": "!('request-document' in succeeded) && state.missing.size() > 0",
         "action": "request-document", "arguments": {"documentType": "state.missing[0]"},
         "confidence": 0.9, "reasoning": "a document is missing"},
        {"when": "'request-document' in succeeded", "done": true,
         "result": {"document": "succeeded['request-document']"}}],
     "otherwise": {"escalate": true, "reasoning": "no rule matched"}}

Each rule (and ``otherwise``) is one of: an ``action`` with ``arguments`` (name -> CEL), ``done`` with a ``result``
(name -> CEL, or one CEL expression), or ``escalate``; plus a ``confidence`` and a ``reasoning``. The CEL
variables are those of ``planners.expressions``. Pure: the same request gives the same answer.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from crds.planner import PlanRequest, PlanResponse
from planners.errors import config_error, invalid_config
from planners.expressions import CelExpression, CelResult, activation, evaluate, evaluate_bool, evaluate_map

PLANNER = "scripted"


class _ConfigModel(BaseModel):
    """camelCase like the rest of the Workflow, and unknown keys refused: a misspelt ``confidnce`` must not be
    silently ignored in a rule that decides what an agent does."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Answer(_ConfigModel):
    """What the planner answers when this rule is the first that holds (or when none holds: ``otherwise``)."""

    action: str | None = Field(default=None, min_length=1, description="The action to propose.")
    arguments: dict[str, CelExpression] = Field(default_factory=dict, description="With action: name -> CEL.")
    done: bool = Field(default=False, description="The goal is reached.")
    result: CelResult | None = Field(
        default=None, description="With done: name -> CEL, or one CEL expression for the whole result."
    )
    escalate: bool = Field(default=False, description="Hand over to a human.")
    confidence: float = Field(default=1.0, ge=0, le=1, description="The proposal's confidence.")
    reasoning: str = Field(default="", max_length=4096, description="Recorded with the proposal.")

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        kinds = [
            kind
            for kind, on in (("action", self.action is not None), ("done", self.done), ("escalate", self.escalate))
            if on
        ]
        if len(kinds) != 1:
            raise ValueError(
                "set exactly one of action, done: true or escalate: true"
                + (f" (this sets {' and '.join(kinds)})" if kinds else "")
            )
        if self.arguments and self.action is None:
            raise ValueError("arguments go with an action")
        if self.result is not None and not self.done:
            raise ValueError("result goes with done: true")
        return self


class Rule(Answer):
    when: CelExpression = Field(description="CEL; the first rule for which it is true answers.")


class ScriptedConfig(_ConfigModel):
    rules: list[Rule] = Field(default_factory=list, max_length=256, description="Tried in order.")
    otherwise: Answer = Field(
        default_factory=lambda: Answer(escalate=True, confidence=0.0, reasoning="no rule matched"),
        description="The answer when no rule holds; escalates by default.",
    )


def parse_config(config: dict[str, Any], action_names: list[str]) -> ScriptedConfig:
    """``config`` validated (every CEL compiles, no unknown keys, every named action exists), or a ``PlanError``."""
    try:
        parsed = ScriptedConfig.model_validate(config)
    except ValidationError as exc:
        raise config_error(exc, PLANNER) from None
    answers: list[tuple[str, Answer]] = [(f"config.rules[{i}]", rule) for i, rule in enumerate(parsed.rules)]
    answers.append(("config.otherwise", parsed.otherwise))
    for where, answer in answers:
        if answer.action is not None and answer.action not in action_names:
            raise invalid_config(
                f"{where}.action",
                f"{answer.action!r} is not one of the agent's actions ({', '.join(action_names)})",
                PLANNER,
            )
    return parsed


def plan(request: PlanRequest) -> PlanResponse:
    config = parse_config(request.config, [action.name for action in request.actions])
    variables = activation(request)
    for index, rule in enumerate(config.rules):
        where = f"config.rules[{index}]"
        if evaluate_bool(rule.when, variables, field=f"{where}.when"):
            return _answer(rule, variables, where, default_reasoning=f"rule {index} matched: {rule.when}")
    return _answer(config.otherwise, variables, "config.otherwise", default_reasoning="no rule matched")


def _answer(answer: Answer, variables: dict[str, Any], where: str, *, default_reasoning: str) -> PlanResponse:
    reasoning = answer.reasoning or default_reasoning
    if answer.action is not None:
        return PlanResponse(
            action=answer.action,
            arguments=evaluate_map(answer.arguments, variables, field=f"{where}.arguments"),
            confidence=answer.confidence,
            reasoning=reasoning,
        )
    if answer.done:
        if isinstance(answer.result, dict):
            result: Any = evaluate_map(answer.result, variables, field=f"{where}.result")
        elif isinstance(answer.result, str):
            result = evaluate(answer.result, variables, field=f"{where}.result")
        else:
            result = None
        return PlanResponse(done=True, result=result, confidence=answer.confidence, reasoning=reasoning)
    return PlanResponse(escalate=True, confidence=answer.confidence, reasoning=reasoning)
