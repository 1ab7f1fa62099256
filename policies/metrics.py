"""Prometheus metrics of Policy enforcement, named ``aiplane_policy_<what>_<unit>``.

Defined here, with the rules they count, so that whoever enforces a Policy (the gateway, the engine, a Kafka
source) counts in the same families; ``policies`` imports no other aiplane package, and prometheus-client's
default registry is the one each process's /metrics serves. Labels name the check and the decision, never a
tenant or a task, so the series stay few.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from prometheus_client import Counter

#: Which Policy part decided: ``access`` (tenants), ``residency``, ``rate_limit``, ``quota`` (tasks in flight),
#: ``approval`` (approval rules) or ``separation_of_duties`` (a submitter approving their own task).
Check = Literal["access", "residency", "rate_limit", "quota", "approval", "separation_of_duties"]

DECISIONS = Counter(
    "aiplane_policy_decisions_total",
    "Decisions of Policies where they are enforced, by check (access, residency, rate_limit, quota, approval, "
    "separation_of_duties) and decision: deny (a submission, call, step or approval refused), and for approval "
    "rules required (a task parked on a human approval), satisfied (a workflow's own approval step already met "
    "the rules) or unsatisfiable.",
    ["check", "decision"],
)
MASKED_VALUES = Counter(
    "aiplane_policy_masked_values_total",
    "Values a PII Policy masked before they were stored or sent, by entity type and action (redact, hash, tokenize).",
    ["entity", "action"],
)


def denied(check: Check) -> None:
    """Count a refusal by the Policies' ``check``."""
    DECISIONS.labels(check, "deny").inc()


def masked(action: str, entities: Iterable[str]) -> None:
    """Count the values masked with ``action``, one entity type per value."""
    for entity in entities:
        MASKED_VALUES.labels(entity, action).inc()
