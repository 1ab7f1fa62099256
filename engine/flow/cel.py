"""CEL for rules steps and step inputs (cel-python): compile once, evaluate against the task's data.

The activation has ``input`` (the task input), ``steps`` (name -> {output}) and ``vars`` (values set by rules
steps). Both compile and evaluation errors are non-retryable: the same expression over the same data fails the
same way every time, so retrying would only delay the dead letter.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import celpy
from celpy.adapter import CELJSONEncoder, json_to_cel
from celpy.evaluation import CELEvalError

from engine.errors import StepError

CEL_COMPILE_ERROR = "CelCompileError"
CEL_EVALUATION_ERROR = "CelEvaluationError"

_lock = threading.Lock()
_environment: celpy.Environment | None = None
_programs: dict[str, celpy.Runner] = {}
_MAX_CACHED = 4096


def compile_expression(expression: str, *, where: str) -> celpy.Runner:
    """Compile (cached by text). ``where`` names the step and field for the error, e.g. ``step 'route' set.tier``."""
    global _environment  # noqa: PLW0603 - one lazily built environment; building the parser is slow
    with _lock:
        program = _programs.get(expression)
        if program is not None:
            return program
        if _environment is None:
            _environment = celpy.Environment()
        try:
            program = _environment.program(_environment.compile(expression))
        except Exception as exc:  # CELParseError and lark errors; all mean the text is not valid CEL
            raise StepError(
                CEL_COMPILE_ERROR,
                f"{where}: cannot compile CEL expression {expression!r}: {' '.join(str(exc).split())}",
                retryable=False,
            ) from exc
        if len(_programs) >= _MAX_CACHED:
            _programs.clear()
        _programs[expression] = program
        return program


def activation(input: Any, steps: Mapping[str, Any], vars: Mapping[str, Any]) -> dict[str, Any]:
    """The CEL variables for a task: ``steps`` maps each completed step to ``{"output": ...}``."""
    return {
        "input": json_to_cel(input),
        "steps": json_to_cel({name: {"output": output} for name, output in steps.items()}),
        "vars": json_to_cel(dict(vars)),
    }


def evaluate(expression: str, variables: Mapping[str, Any], *, where: str) -> Any:
    """Evaluate to a plain JSON value (dict, list, str, int, float, bool, None)."""
    program = compile_expression(expression, where=where)
    try:
        value = program.evaluate(dict(variables))
    except CELEvalError as exc:
        raise StepError(
            CEL_EVALUATION_ERROR, f"{where}: CEL expression {expression!r} failed: {exc.args[0]}", retryable=False
        ) from exc
    if isinstance(value, CELEvalError):  # some errors come back as values instead of being raised
        raise StepError(
            CEL_EVALUATION_ERROR, f"{where}: CEL expression {expression!r} failed: {value.args[0]}", retryable=False
        )
    return to_python(value)


def to_python(value: Any) -> Any:
    """CEL values back to JSON values (the CEL JSON encoder already knows every CEL type)."""
    return json.loads(json.dumps(value, cls=CELJSONEncoder))


def evaluate_map(expressions: Mapping[str, str], variables: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Evaluate each expression of a ``key: CEL`` map (a step's ``input``), keys kept."""
    return {key: evaluate(expr, variables, where=f"{where}.{key}") for key, expr in expressions.items()}
