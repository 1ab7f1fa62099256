"""What a Workflow spec must satisfy beyond its schema, and the content version of a spec. Pure.

The engine refuses a spec that fails these checks when it is registered; the Workflow operator reports them as the
Valid condition. Both import them from here, next to the schema, so the two can never disagree (operators may
import only ``crds``, and importing ``engine`` would pull in its store).

CEL expressions are compiled with the same library the engine evaluates them with; a compiled program is not kept.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cel

from crds.workflow import STEP_TYPES, Step, WorkflowSpec

VERSION_LENGTH = 16


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: the offending field (``steps.<name>.<where>``), what to fix, and a reason in
    CamelCase for a condition."""

    field: str
    message: str
    reason: str = "InvalidSpec"

    def __str__(self) -> str:
        return self.message


def canonical(spec: WorkflowSpec) -> dict[str, Any]:
    """The spec as stored and hashed: camelCase, defaults filled in, absent fields left out."""
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)


def version_of(spec: WorkflowSpec) -> str:
    """The content version: the same spec always has the same version, another spec (almost surely) another."""
    text = json.dumps(canonical(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:VERSION_LENGTH]


def problems(spec: WorkflowSpec) -> list[Problem]:
    """Everything wrong with the spec, in step order; empty when the engine can run it.

    The graph is checked first: a cycle or a dangling reference is reported even when an expression is also wrong.
    """
    found = list(_structure(spec))
    if not found:
        found += _cycles(spec)
    found += _cel(spec)
    return found


def step_references(step: Step) -> dict[str, str | None]:
    """Where a step names another step (``next``, branches, default, onReject, onExpire) -> the step it names."""
    references: dict[str, str | None] = {"next": step.next}
    if step.rules is not None:
        references["rules.default"] = step.rules.default
        references.update({f"rules.branches[{i}].next": b.next for i, b in enumerate(step.rules.branches)})
    if step.approval is not None:
        references["approval.onReject"] = step.approval.on_reject
        references["approval.onExpire"] = step.approval.on_expire
    if step.agent is not None and step.agent.escalation is not None:
        references["agent.escalation.to"] = step.agent.escalation.to
    return references


def _structure(spec: WorkflowSpec) -> Iterator[Problem]:
    # The apiserver enforces most of these with the CRD's x-kubernetes-validations; specs registered directly
    # (aiplane dev, tests, the gateway) are checked here the same way.
    names = [step.name for step in spec.steps]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        yield Problem("steps", f"step names must be unique; repeated: {', '.join(duplicates)}")
    known = set(names)
    for step in spec.steps:
        if getattr(step, step.type) is None:
            yield Problem(f"steps.{step.name}", f"step {step.name!r} has type {step.type} but no '{step.type}' block")
        for other in STEP_TYPES:
            if other != step.type and getattr(step, other) is not None:
                yield Problem(
                    f"steps.{step.name}.{other}",
                    f"step {step.name!r} has type {step.type} and may not have a '{other}' block",
                )
        if step.next is not None and step.end:
            yield Problem(f"steps.{step.name}.next", f"step {step.name!r} sets both next and end")
        if step.agent is not None:
            actions = [action.name for action in step.agent.actions]
            repeated = sorted({name for name in actions if actions.count(name) > 1})
            if repeated:
                yield Problem(
                    f"steps.{step.name}.agent.actions",
                    f"step {step.name!r}: agent action names must be unique; repeated: {', '.join(repeated)}",
                )
        for where, target in step_references(step).items():
            if target is not None and target not in known:
                yield Problem(
                    f"steps.{step.name}.{where}",
                    f"step {step.name!r} {where} names {target!r}, which is not a step of this workflow",
                    reason="UnknownStep",
                )
    if spec.sla is not None and spec.sla.escalate_to is not None and spec.sla.escalate_to not in known:
        yield Problem(
            "sla.escalateTo",
            f"sla.escalateTo names {spec.sla.escalate_to!r}, which is not a step of this workflow",
            reason="UnknownStep",
        )


def _successors(spec: WorkflowSpec, index: int) -> list[tuple[str, str]]:
    """(where, step) for every step that may run after ``spec.steps[index]``, as the engine moves on."""
    step = spec.steps[index]
    usual: list[tuple[str, str]] = []
    if step.next is not None:
        usual = [("next", step.next)]
    elif not step.end and index + 1 < len(spec.steps):
        usual = [("the step after it in the list", spec.steps[index + 1].name)]
    if step.rules is not None:
        branches = [(f"rules.branches[{i}].next", b.next) for i, b in enumerate(step.rules.branches)]
        # A default replaces the usual order when no branch matches.
        fallback = [("rules.default", step.rules.default)] if step.rules.default is not None else usual
        return branches + fallback
    if step.approval is not None:
        jumps = [("approval.onReject", step.approval.on_reject), ("approval.onExpire", step.approval.on_expire)]
        return usual + [(where, target) for where, target in jumps if target is not None]
    if step.agent is not None and step.agent.escalation is not None:
        return [*usual, ("agent.escalation.to", step.agent.escalation.to)]
    return usual


def _cycles(spec: WorkflowSpec) -> Iterator[Problem]:
    """A step that can be reached again from itself: the engine runs each step of a task at most once (a
    completed step is never run again), so a loop would stop the task there rather than go round."""
    order = {step.name: i for i, step in enumerate(spec.steps)}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> Problem | None:
        state[name] = 1
        path.append(name)
        for where, target in _successors(spec, order[name]):
            if state.get(target) == 1:
                loop = [*path[path.index(target) :], target]
                return Problem(
                    f"steps.{name}.{where}" if not where.startswith("the step") else f"steps.{name}",
                    f"step {name!r} {where} leads back to {target!r}, a cycle ({' -> '.join(loop)}); "
                    "a workflow's steps must not loop (each step of a task runs once)",
                    reason="Cycle",
                )
            if state.get(target) is None:
                found = visit(target)
                if found is not None:
                    return found
        path.pop()
        state[name] = 2
        return None

    for step in spec.steps:
        if step.name not in state:
            problem = visit(step.name)
            if problem is not None:
                yield problem
                return


def expressions(step: Step) -> dict[str, str]:
    """A step's CEL expressions by where they are (``rules.set.tier``, ``model.input.text``)."""
    found: dict[str, str] = {}
    if step.model is not None:
        found.update({f"model.input.{k}": v for k, v in step.model.input.items()})
    if step.connector is not None:
        found.update({f"connector.input.{k}": v for k, v in step.connector.input.items()})
    if step.rules is not None:
        found.update({f"rules.set.{k}": v for k, v in step.rules.set.items()})
        found.update({f"rules.branches[{i}].when": b.when for i, b in enumerate(step.rules.branches)})
    if step.agent is not None:
        found.update({f"agent.state.{k}": v for k, v in step.agent.state.items()})
        found.update({f"agent.goal[{i}]": part for i, part in enumerate(template_expressions(step.agent.goal))})
        if step.agent.escalation is not None and step.agent.escalation.when is not None:
            found["agent.escalation.when"] = step.agent.escalation.when
    return found


_TEMPLATE_PART = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


def template_expressions(template: str) -> list[str]:
    """The CEL expressions of a ``{{ expr }}`` template (an agent's goal), in order."""
    return [match.group(1).strip() for match in _TEMPLATE_PART.finditer(template)]


def render_template(template: str, evaluate: Callable[[str], Any]) -> str:
    """``template`` with each ``{{ expr }}`` replaced by ``evaluate(expr)`` (strings as they are, other values as
    JSON)."""

    def value(match: re.Match[str]) -> str:
        result = evaluate(match.group(1).strip())
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)

    return _TEMPLATE_PART.sub(value, template)


class CelCompileError(ValueError):
    """A CEL expression that does not compile; the message is the compiler's, on one line."""


_programs_lock = threading.Lock()
_programs: dict[str, cel.Program] = {}
_MAX_PROGRAMS = 4096


def program(expression: str) -> cel.Program:
    """``expression`` compiled, cached by its text (the engine, the gateway's policies and the operators all
    evaluate the same few expressions over and over); raises ``CelCompileError``."""
    with _programs_lock:
        compiled = _programs.get(expression)
    if compiled is not None:
        return compiled
    try:
        compiled = cel.compile(expression)
    except (ValueError, RuntimeError) as exc:
        raise CelCompileError(" ".join(str(exc).split())) from None
    with _programs_lock:
        if len(_programs) >= _MAX_PROGRAMS:
            _programs.clear()
        _programs[expression] = compiled
    return compiled


def json_value(value: Any) -> Any:
    """A CEL result as a JSON value: timestamps and durations become strings, bytes are decoded."""
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return f"{value.total_seconds()}s"
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def compile_error(expression: str) -> str | None:
    """Why ``expression`` does not compile as CEL, or None when it does."""
    try:
        program(expression)
    except CelCompileError as exc:
        return str(exc)
    return None


def _cel(spec: WorkflowSpec) -> Iterator[Problem]:
    """Every expression compiles now, so a typo is refused at registration rather than dead-lettering tasks."""
    for step in spec.steps:
        for where, expression in expressions(step).items():
            error = compile_error(expression)
            if error is not None:
                yield Problem(
                    f"steps.{step.name}.{where}",
                    f"step {step.name!r} {where}: cannot compile CEL expression {expression!r}: {error}",
                    reason="CelCompileError",
                )
