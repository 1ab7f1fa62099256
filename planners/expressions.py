"""CEL in planner configs: compiled by the project's one cache (``crds.checks.program``), evaluated over what a
``PlanRequest`` says.

The activation (docs/planners.md lists it for config authors):

- ``goal`` (string), ``state`` (as sent), ``budget`` (``stepsLeft``, ``costLeft``, ``secondsLeft``);
- ``actions``: the names of the actions the agent may use;
- ``transcript``: the entries so far, camelCase maps (``step``, ``action``, ``arguments``, ``confidence``,
  ``reasoning``, ``outcome``, ``observation``, ``error``); ``last``: the last of them, or null;
- ``succeeded``: action name -> the observation of its latest succeeded run (``'x' in succeeded``);
- ``attempts``: action name -> how many times it was proposed (0 for every action not proposed yet).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, Field, PlainValidator

from crds import checks
from crds.planner import PlanRequest
from planners.errors import evaluation_error

MAX_EXPRESSION_CHARS = 4096


def _compiles(expression: str) -> str:
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"CEL expression longer than {MAX_EXPRESSION_CHARS} characters")
    error = checks.compile_error(expression)
    if error is not None:
        raise ValueError(f"CEL expression {expression!r} does not compile: {error}")
    return expression


#: A CEL expression in a planner config, refused at validation when it does not compile.
CelExpression = Annotated[str, Field(min_length=1), AfterValidator(_compiles)]


def _result_spec(value: Any) -> dict[str, str] | str:
    # One validator rather than a union, so a bad entry is reported at ``result`` with its key, not once per
    # union member under pydantic's internal names.
    if isinstance(value, str) and value:
        return _compiles(value)
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        for key, expression in value.items():
            if not isinstance(expression, str) or not expression:
                raise ValueError(f"{key}: must be a CEL expression (a non-empty string), not {expression!r}")
            try:
                _compiles(expression)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        return value
    raise ValueError(f"must be a map of name -> CEL expression, or one CEL expression; not {value!r}")


#: A result: name -> CEL expression (a map of their values), or one CEL expression (its value).
CelResult = Annotated[dict[str, str] | str, PlainValidator(_result_spec)]


def activation(request: PlanRequest) -> dict[str, Any]:
    transcript = [entry.model_dump(mode="json", by_alias=True) for entry in request.transcript]
    succeeded: dict[str, Any] = {}
    attempts: dict[str, int] = dict.fromkeys((action.name for action in request.actions), 0)
    for entry in transcript:
        attempts[entry["action"]] = attempts.get(entry["action"], 0) + 1
        if entry["outcome"] == "succeeded":
            succeeded[entry["action"]] = entry["observation"]
    return {
        "goal": request.goal,
        "state": request.state,
        "budget": request.budget.model_dump(mode="json", by_alias=True),
        "actions": [action.name for action in request.actions],
        "transcript": transcript,
        "last": transcript[-1] if transcript else None,
        "succeeded": succeeded,
        "attempts": attempts,
    }


def evaluate(expression: str, variables: Mapping[str, Any], *, field: str) -> Any:
    """``expression``'s value as JSON; a failure is a ``PlanError`` (422) naming ``field``."""
    program = checks.program(expression)  # compiled when the config was validated: a cache hit
    # Only the variables the text names: converting a long transcript for an expression that never reads it
    # would be most of the call (CEL has no indirection, so an unnamed variable cannot be reached).
    named = {name: value for name, value in variables.items() if name in expression}
    try:
        value = program.execute(named)
    except Exception as exc:  # the extension raises KeyError, TypeError, ValueError, ZeroDivisionError, ...
        message = f"no such key or variable {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else str(exc)
        raise evaluation_error(field, expression, " ".join(message.split()) or type(exc).__name__) from exc
    return checks.json_value(value)


def evaluate_bool(expression: str, variables: Mapping[str, Any], *, field: str) -> bool:
    value = evaluate(expression, variables, field=field)
    if not isinstance(value, bool):
        raise evaluation_error(field, expression, f"gave {type(value).__name__} {value!r}, not a bool")
    return value


def evaluate_map(expressions: Mapping[str, str], variables: Mapping[str, Any], *, field: str) -> dict[str, Any]:
    return {key: evaluate(expr, variables, field=f"{field}.{key}") for key, expr in expressions.items()}
