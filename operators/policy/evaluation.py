"""What a Policy selects in its namespace and what is wrong with it, folded into ``Policy.status``. Pure.

Selection is ``crds.policy.Selector.matches``, the same predicate the gateway and engine use (``policies.effective``),
so the status shows exactly what is enforced. Approval conditions are compiled with the CEL library the engine
evaluates them with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crds.base import SecretKeyRef
from crds.checks import Problem, compile_error
from crds.policy import PolicySpec, PolicyStatus, Selection
from operators.model.status import Conditions

READY = "Ready"
KINDS = ("Workflow", "Model", "Connector")
MAX_NAMES = 100


@dataclass(frozen=True)
class Seen:
    """A Workflow, Model or Connector of the namespace, as the operator's index saw it."""

    kind: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    # A kafkaSource Connector: its governed consumer pods run in this namespace and mask with the PII key there.
    kafka_source: bool = False


def problems(spec: PolicySpec) -> list[Problem]:
    """What keeps the Policy from being enforced as written: approval and agent action conditions that do not
    compile (an agent action rule that cannot be evaluated would deny its actions: it fails closed)."""
    found: list[Problem] = []
    for index, rule in enumerate(spec.approvals):
        error = compile_error(rule.when)
        if error is not None:
            found.append(
                Problem(
                    f"spec.approvals[{index}].when",
                    f"approval rule {rule.name!r}: cannot compile CEL expression {rule.when!r}: {error}",
                    reason="CelCompileError",
                )
            )
    for index, action_rule in enumerate(spec.agent_actions):
        error = compile_error(action_rule.when) if action_rule.when is not None else None
        if error is not None:
            found.append(
                Problem(
                    f"spec.agentActions[{index}].when",
                    f"agent action rule {action_rule.name!r}: cannot compile CEL expression {action_rule.when!r}: "
                    f"{error}",
                    reason="CelCompileError",
                )
            )
    return found


def key_users(spec: PolicySpec, resources: Iterable[Seen]) -> list[str]:
    """The namespace's kafkaSource Connectors, sorted, when the Policy hashes or tokenizes personal data: their
    governed consumer pods do that with the PII key from a Secret of this namespace (redaction needs no key; the
    gateway and workers take theirs from the release's namespace)."""
    if spec.pii is None or spec.pii.action == "redact":
        return []
    return sorted(seen.name for seen in resources if seen.kind == "Connector" and seen.kafka_source)


def key_problem(spec: PolicySpec, namespace: str, users: list[str], key: SecretKeyRef, lacking: str) -> Problem:
    """``lacking``: "secret" (the key's Secret is not in ``namespace``), "key" (it has no such key) or "forbidden"
    (the operator may not read it)."""
    assert spec.pii is not None
    why = (
        f"spec.pii.action {spec.pii.action} needs the PII key, which the governed consumer pods of kafkaSource "
        f"Connectors {', '.join(users)} read from Secret {key.name!r} (key {key.key!r}) in namespace {namespace}"
    )
    if lacking == "forbidden":
        return Problem(
            "spec.pii.action",
            f"{why}; the operator may not read it (403 Forbidden): grant its ServiceAccount get on secrets",
            reason="SecretsForbidden",
        )
    what = f"it has no key {key.key!r}" if lacking == "key" else "it does not exist"
    return Problem(
        "spec.pii.action",
        f"{why}: {what}; copy the release's PII key Secret there (operator setting AIPLANE_PII_SECRET)",
        reason="SecretMissing",
    )


def select(spec: PolicySpec, resources: Iterable[Seen]) -> dict[str, list[str]]:
    """Names of the selected resources per kind, sorted."""
    chosen: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for seen in resources:
        if seen.kind in chosen and spec.selector.matches(seen.kind, seen.labels):
            chosen[seen.kind].append(seen.name)
    return {kind: sorted(names) for kind, names in chosen.items()}


def _count(n: int, kind: str) -> str:
    return f"{n} {kind}" + ("" if n == 1 else "s")


def fold(
    previous: PolicyStatus | None,
    *,
    generation: int,
    selected: Mapping[str, list[str]],
    problems: list[Problem],
    now: datetime,
) -> PolicyStatus:
    before = previous or PolicyStatus()
    make = Conditions(before.conditions, generation, now)
    total = sum(len(names) for names in selected.values())
    summary = ", ".join(_count(len(selected.get(kind, [])), kind) for kind in KINDS)
    if problems:
        reasons = {p.reason for p in problems}
        reason = reasons.pop() if len(reasons) == 1 else "InvalidSpec"
        ready = make(READY, False, reason, "; ".join(p.message for p in problems))
    elif total == 0:
        ready = make(READY, True, "NothingSelected", "selects nothing: no resource of its kinds matches its labels")
    else:
        ready = make(READY, True, "Selecting", f"selects {summary}")
    selection = Selection(
        workflows=selected.get("Workflow", [])[:MAX_NAMES],
        models=selected.get("Model", [])[:MAX_NAMES],
        connectors=selected.get("Connector", [])[:MAX_NAMES],
    )
    return before.model_copy(
        update={"observed_generation": generation, "conditions": [ready], "selected": total, "selection": selection}
    )


def to_patch(status: PolicyStatus) -> dict[str, Any]:
    body: dict[str, Any] = status.model_dump(by_alias=True, mode="json")
    return body
