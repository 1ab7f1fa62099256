"""The retrieval planner: proposes the action whose description is most similar, in a sentence-embedding space, to
what the agent is after now (the goal, the state and the last observation).

Each call:

1. ``doneWhen`` (CEL) true: done, with ``result`` (name -> CEL, or one CEL expression; default the state).
2. Candidates: the agent's actions, less those the engine refused before (denied by policy or invalid arguments:
   proposing them again would be refused again) and, unless ``allowRepeat``, those that already succeeded.
   None left: escalate.
3. The query text (``query``, a CEL expression giving a string, or by default the goal, the state and the last
   entry's observation or error, as words) and each candidate's description are embedded (all-MiniLM-L6-v2, unit
   vectors; descriptions cached per process) and ranked by cosine similarity.
4. The best below ``minSimilarity``: escalate. Otherwise propose it with its ``arguments`` (name -> CEL, per
   action; by default the state, or the state's keys that the action's input schema lists as properties) and
   a confidence from the similarity and the margin to the runner-up:

   ``relevance = clamp((best - minSimilarity) / (fullSimilarity - minSimilarity), 0, 1)``,
   ``decisiveness = clamp((best - runnerUp) / fullMargin, 0, 1)`` (1 with a single candidate),
   ``confidence = relevance * (0.5 + 0.5 * decisiveness)``:

   a clearly relevant action far ahead of the next scores 1, two equally good actions score at most 0.5 (a coin
   toss: the step's escalation.minConfidence, 0.5 by default, decides whether a human breaks the tie).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from crds.planner import ActionSpec, PlanRequest, PlanResponse
from planners.embedding import Vector
from planners.errors import config_error, evaluation_error, invalid_config
from planners.expressions import CelExpression, CelResult, activation, evaluate, evaluate_bool, evaluate_map

PLANNER = "retrieval"
#: Outcomes after which an action is not proposed again: the engine would refuse it the same way.
REFUSED = ("denied", "invalid")
#: Longest query text embedded; the model reads 256 word pieces at most anyway.
MAX_QUERY_CHARS = 2000
MAX_REASONING_CHARS = 8000


class Embedder(Protocol):
    """Texts -> unit vectors, one row per text (``planners.embedding.SentenceEmbedder``)."""

    def embed(self, texts: Sequence[str]) -> Vector: ...

    def embed_cached(self, texts: Sequence[str]) -> Vector:
        """``embed``, remembering the vectors: for the action descriptions, which come with every request."""
        ...


class RetrievalConfig(BaseModel):
    """The retrieval planner's part of the step's planner.config; unknown keys are refused, like the scripted one's."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    min_similarity: float = Field(
        default=0.25, ge=-1, lt=1, description="Escalate when the best action's cosine similarity is lower."
    )
    full_similarity: float = Field(
        default=0.6, gt=-1, le=1, description="Similarity at which an action counts as fully relevant."
    )
    full_margin: float = Field(
        default=0.1, gt=0, le=2, description="Lead over the runner-up at which the choice counts as decisive."
    )
    allow_repeat: bool = Field(default=False, description="An action that already succeeded may be chosen again.")
    query: CelExpression | None = Field(default=None, description="CEL giving the text to embed; default below.")
    arguments: dict[str, dict[str, CelExpression]] = Field(
        default_factory=dict, description="Action name -> its arguments, name -> CEL; default the state."
    )
    done_when: CelExpression | None = Field(default=None, description="CEL: the goal is reached.")
    result: CelResult | None = Field(
        default=None, description="With doneWhen: name -> CEL, or one CEL expression; default the state."
    )

    @model_validator(mode="after")
    def _ordered(self) -> RetrievalConfig:
        if self.full_similarity <= self.min_similarity:
            raise ValueError(
                f"fullSimilarity ({self.full_similarity}) must be above minSimilarity ({self.min_similarity})"
            )
        if self.result is not None and self.done_when is None:
            raise ValueError("result goes with doneWhen")
        return self


def parse_config(config: dict[str, Any], action_names: list[str]) -> RetrievalConfig:
    try:
        parsed = RetrievalConfig.model_validate(config)
    except ValidationError as exc:
        raise config_error(exc, PLANNER) from None
    for name in parsed.arguments:
        if name not in action_names:
            raise invalid_config(
                f"config.arguments.{name}",
                f"{name!r} is not one of the agent's actions ({', '.join(action_names)})",
                PLANNER,
            )
    return parsed


def confidence(best: float, runner_up: float | None, config: RetrievalConfig) -> float:
    """The documented mapping of a similarity and its lead over the runner-up to a 0-1 confidence."""
    span = config.full_similarity - config.min_similarity
    relevance = min(max((best - config.min_similarity) / span, 0.0), 1.0)
    decisiveness = 1.0 if runner_up is None else min(max((best - runner_up) / config.full_margin, 0.0), 1.0)
    return round(relevance * (0.5 + 0.5 * decisiveness), 4)


def plan(request: PlanRequest, embedder: Embedder) -> PlanResponse:
    config = parse_config(request.config, [action.name for action in request.actions])
    variables = activation(request)
    if config.done_when is not None and evaluate_bool(config.done_when, variables, field="config.doneWhen"):
        return PlanResponse(
            done=True, result=_result(config, variables), reasoning=f"doneWhen holds: {config.done_when}"
        )

    candidates = _candidates(request, config)
    if not candidates:
        return PlanResponse(
            escalate=True,
            confidence=0.0,
            reasoning="no action left to try: every action was refused (denied or invalid) or already succeeded",
        )
    query = _query(request, config, variables)
    descriptions = embedder.embed_cached([action.description for action in candidates])
    similarities = [float(s) for s in descriptions @ embedder.embed([query])[0]]
    ranked = sorted(zip(similarities, candidates, strict=True), key=lambda pair: -pair[0])
    best, chosen = ranked[0]
    runner_up = ranked[1][0] if len(ranked) > 1 else None
    ranking = ", ".join(f"{action.name} {similarity:.3f}" for similarity, action in ranked)
    reasoning = f"similarity to the query: {ranking}; query: {query}"
    if best < config.min_similarity:
        return PlanResponse(
            escalate=True,
            confidence=0.0,
            reasoning=_clip(
                f"no action is similar enough (best {best:.3f} < minSimilarity {config.min_similarity}); {reasoning}"
            ),
        )
    return PlanResponse(
        action=chosen.name,
        arguments=_arguments(chosen, request.state, config, variables),
        confidence=confidence(best, runner_up, config),
        reasoning=_clip(f"chose {chosen.name}: {reasoning}"),
    )


def _candidates(request: PlanRequest, config: RetrievalConfig) -> list[ActionSpec]:
    refused = {entry.action for entry in request.transcript if entry.outcome in REFUSED}
    succeeded = {entry.action for entry in request.transcript if entry.outcome == "succeeded"}
    excluded = refused if config.allow_repeat else refused | succeeded
    return [action for action in request.actions if action.name not in excluded]


def _query(request: PlanRequest, config: RetrievalConfig, variables: dict[str, Any]) -> str:
    if config.query is not None:
        text = evaluate(config.query, variables, field="config.query")
        if not isinstance(text, str):
            raise evaluation_error("config.query", config.query, f"gave {type(text).__name__}, not a string")
        return text[:MAX_QUERY_CHARS]
    parts = [request.goal]
    if request.state not in (None, {}, [], ""):
        parts.append(f"State: {words(request.state)}")
    if request.transcript:
        last = request.transcript[-1]
        seen = last.observation if last.outcome == "succeeded" else last.error
        action = last.action.replace("-", " ")  # action names are DNS labels: request-document
        parts.append(f"Last: {action} {last.outcome}" + (f": {words(seen)}" if seen is not None else ""))
    return ". ".join(parts)[:MAX_QUERY_CHARS]


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def words(value: Any) -> str:
    """A JSON value as plain words for the embedder: keys and identifiers split (``missingDocuments``,
    ``police_report`` -> ``missing documents``, ``police report``), no braces or quotes."""
    if isinstance(value, dict):
        return "; ".join(f"{words(key)} {words(item)}" for key, item in value.items())
    if isinstance(value, list):
        return ", ".join(words(item) for item in value)
    if isinstance(value, str):
        return _CAMEL.sub(" ", value).replace("_", " ")
    return json.dumps(value)


def _arguments(action: ActionSpec, state: Any, config: RetrievalConfig, variables: dict[str, Any]) -> dict[str, Any]:
    expressions = config.arguments.get(action.name)
    if expressions is not None:
        return evaluate_map(expressions, variables, field=f"config.arguments.{action.name}")
    if not isinstance(state, dict):
        return {}
    properties = action.input_schema.get("properties")
    if isinstance(properties, dict):
        return {key: value for key, value in state.items() if key in properties}
    return dict(state)


def _result(config: RetrievalConfig, variables: dict[str, Any]) -> Any:
    if isinstance(config.result, dict):
        return evaluate_map(config.result, variables, field="config.result")
    if isinstance(config.result, str):
        return evaluate(config.result, variables, field="config.result")
    return variables["state"]


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASONING_CHARS else text[: MAX_REASONING_CHARS - 1] + "…"
