"""Whether an agent may take an action: the Policies' ``agentActions`` rules over one proposal. Pure.

A rule matches a proposal when the action is among its ``actions`` (by the action's name, by what it calls as
``kind/name``, or ``*``), the task's tenant and data class are among its lists (empty lists match all), and its
``when`` holds. Combination, the same whatever order the Policies come in:

- a matching ``deny`` refuses the action (deny wins);
- otherwise, when any rule says ``allow``, the action must match one of them (the Policies then form an
  allow-list, so an action added to a Workflow later is not allowed by accident);
- otherwise the action is allowed.

``when`` fails closed as approval rules do: a condition that cannot be evaluated counts as true for a deny and as
false for an allow, so an error never widens what an agent may do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crds import checks
from policies.effective import EffectiveAgentRule, PolicyRef


@dataclass(frozen=True, kw_only=True)
class Proposed:
    """One proposed action, as the rules see it."""

    action: str
    #: What it calls, as ``model/<name>``, ``connector/<name>`` or ``workflow/<name>``.
    target: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    tenant: str
    data_class: str | None = None
    input: Any = None

    def variables(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "target": self.target,
            "arguments": dict(self.arguments),
            "tenant": self.tenant,
            "dataClass": self.data_class,
            "input": self.input,
        }


@dataclass(frozen=True)
class ActionDecision:
    allowed: bool
    reason: str
    #: The rule that decided (``policy/rule``), None when no rule did.
    rule: str | None = None
    policies: tuple[PolicyRef, ...] = ()


def _selects(rule: EffectiveAgentRule, proposed: Proposed) -> bool:
    spec = rule.rule
    names = set(spec.actions)
    if "*" not in names and proposed.action not in names and proposed.target not in names:
        return False
    if spec.tenants and proposed.tenant not in spec.tenants:
        return False
    return not spec.data_classes or proposed.data_class in spec.data_classes


def _holds(rule: EffectiveAgentRule, variables: Mapping[str, Any]) -> tuple[bool | None, str]:
    """(value, why): None when ``when`` could not be evaluated."""
    expression = rule.rule.when
    if expression is None:
        return True, ""
    try:
        value = checks.program(expression).execute(dict(variables))
    except Exception as error:  # a compile error, a missing field, a type error: all fail closed
        return None, f"when {expression!r} could not be evaluated ({type(error).__name__}: {error})"
    if isinstance(value, bool):
        return value, f"when {expression!r} holds" if value else ""
    return None, f"when {expression!r} gave {value!r}, not a boolean"


def _name(rule: EffectiveAgentRule) -> str:
    return f"{rule.source}/{rule.rule.name}"


def decide(rules: Iterable[EffectiveAgentRule], proposed: Proposed) -> ActionDecision:
    """Whether ``proposed`` may run under ``rules`` (the module docstring says how)."""
    rules = list(rules)
    variables = proposed.variables()
    allows = [rule for rule in rules if rule.rule.effect == "allow"]
    for rule in rules:
        if rule.rule.effect != "deny" or not _selects(rule, proposed):
            continue
        holds, why = _holds(rule, variables)
        if holds is not False:
            detail = f" ({why})" if why else ""
            return ActionDecision(
                False,
                f"action {proposed.action!r} ({proposed.target}) is denied by agent action rule {_name(rule)}{detail}",
                _name(rule),
                (rule.source,),
            )
    for rule in allows:
        if _selects(rule, proposed) and _holds(rule, variables)[0] is True:
            return ActionDecision(
                True, f"action {proposed.action!r} is allowed by rule {_name(rule)}", _name(rule), (rule.source,)
            )
    if allows:
        return ActionDecision(
            False,
            f"action {proposed.action!r} ({proposed.target}) is not allowed: no agent action rule allows it for "
            f"tenant {proposed.tenant!r} and data class {proposed.data_class or 'none'} "
            f"(allow rules: {', '.join(_name(rule) for rule in allows)})",
            None,
            tuple(sorted({rule.source for rule in allows})),
        )
    return ActionDecision(True, "no agent action rule applies", None, ())
