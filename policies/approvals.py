"""Approval rules of Policies: which ones a task triggers, and the one approval requirement they add up to. Pure.

A rule's ``when`` is CEL over the task: ``input`` (the task input), ``result`` (the task's result, once there is
one), ``steps.<name>.output`` and ``vars``, the same names rules steps use. Evaluation fails closed: a rule whose
condition cannot be evaluated over this task (a field it reads is missing, a type error) counts as triggered, and
the reason says so, because an approval nobody needed costs a person a click while a skipped one is a governance
failure.

Several triggered rules make one requirement: the largest quorum, the roles every one of them accepts, separation
of duties if any asks for it (``requirement``). The engine asks ``triggered`` when a task is about to finish and,
if anything triggered, parks the task on an approval with that requirement instead of finishing it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cel

from crds import checks
from policies.effective import EffectiveApproval, PolicyRef


class ApprovalRuleError(ValueError):
    """A rule's condition does not compile (the Policy operator reports these on the Policy's status)."""


@dataclass(frozen=True)
class Triggered:
    """One rule that requires an approval for this task, and why."""

    rule: EffectiveApproval
    reason: str


@dataclass(frozen=True)
class Requirement:
    """The approval a task needs: who may approve, how many, and the rules and Policies behind it."""

    rules: tuple[str, ...]
    roles: frozenset[str]
    quorum: int
    separation_of_duties: bool
    reasons: tuple[str, ...]
    policies: tuple[PolicyRef, ...]

    @property
    def satisfiable(self) -> bool:
        """False when the triggered rules share no role: nobody could approve, so the task must be refused."""
        return bool(self.roles)


def _program(expression: str) -> cel.Program:
    try:
        return checks.program(expression)
    except checks.CelCompileError as error:
        raise ApprovalRuleError(f"cannot compile CEL expression {expression!r}: {error}") from None


def variables(
    input: Any, *, result: Any = None, steps: Mapping[str, Any] | None = None, vars: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The CEL variables of a task; ``steps`` maps each completed step's name to its output."""
    return {
        "input": input,
        "result": result,
        "steps": {name: {"output": output} for name, output in (steps or {}).items()},
        "vars": dict(vars or {}),
    }


def _holds(expression: str, activation: Mapping[str, Any]) -> tuple[bool, str]:
    program = _program(expression)
    named = {name: value for name, value in activation.items() if name in expression}
    try:
        value = program.execute(named)
    except Exception as error:  # the extension raises KeyError, TypeError, ValueError, ...
        return True, f"{expression!r} could not be evaluated ({type(error).__name__}: {error}), so it counts as true"
    if value is True:
        return True, f"{expression!r} holds"
    if value is False:
        return False, ""
    return True, f"{expression!r} gave {value!r}, not a boolean, so it counts as true"


def triggered(rules: Iterable[EffectiveApproval], activation: Mapping[str, Any]) -> list[Triggered]:
    """The rules that require an approval for a task with these variables (see ``variables``)."""
    found: list[Triggered] = []
    for rule in rules:
        for expression in rule.when:
            holds, why = _holds(expression, activation)
            if holds:
                found.append(Triggered(rule, f"approval rule {rule.name!r}: {why}"))
                break
    return found


def requirement(fired: Iterable[Triggered]) -> Requirement | None:
    """The one approval the triggered rules add up to; None when none triggered."""
    fired = list(fired)
    if not fired:
        return None
    roles = frozenset.intersection(*(t.rule.roles for t in fired))
    policies = sorted({source for t in fired for source in t.rule.sources})
    return Requirement(
        rules=tuple(t.rule.name for t in fired),
        roles=roles,
        quorum=max(t.rule.quorum for t in fired),
        separation_of_duties=any(t.rule.separation_of_duties for t in fired),
        reasons=tuple(t.reason for t in fired),
        policies=tuple(policies),
    )
