"""Retention: how long each class of a workflow's data is kept, as the Policies that govern it say. Pure.

The effective policy (``policies.effective``) already combines several Policies per workflow (the shortest period
per data class, the longest for audit). Here: the periods a purge applies, the audit period for the whole log
(one hash chain holds every workflow's records, so it is kept as long as any Policy asks), and the period of a
topic many workflows share (the shortest, since every workflow's events pass through it).

What each data class covers in aiplane's store (``engine.store.purge``):

- ``inputs``: a finished task's input;
- ``results``: a finished task's result, its variables, its step outputs and callback payloads;
- ``events``: a finished task's published events (the outbox), and the events topic on Kafka;
- on Kafka, ``results`` also sets the topic of each kafkaSink Connector the workflows publish to
  (``sink_periods``);
- ``payloadLogs``: the workflow's payload log records the engine keeps (``engine.store.payload_logs``), from when
  each was written;
- ``audit``: the audit log, pruned with ``AuditLog.prune``.

Periods run from when the task finished; a task still running keeps everything. No Policy, no period: the data is
kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from crds.policy import Policy
from crds.workflow import WorkflowSpec
from policies.effective import DataClass, EffectivePolicy, Target, parse_duration

#: Data classes kept in aiplane's store, per workflow.
STORED: tuple[DataClass, ...] = ("inputs", "results", "events")

RetentionFor = Callable[[str], Mapping[DataClass, timedelta]]


@dataclass(frozen=True)
class Cutoffs:
    """Per stored data class, the instant before which a finished task's data of that class goes."""

    inputs: datetime | None = None
    results: datetime | None = None
    events: datetime | None = None

    @property
    def any(self) -> bool:
        return any(value is not None for value in (self.inputs, self.results, self.events))


def cutoffs(retention: Mapping[DataClass, timedelta], now: datetime) -> Cutoffs:
    """The cutoffs of one workflow's effective retention at ``now``."""
    return Cutoffs(**{c: now - retention[c] for c in STORED if c in retention})


def retention_for(effective: Callable[[Target], EffectivePolicy], targets: Mapping[str, Target]) -> RetentionFor:
    """Each workflow's effective retention by name; ``targets`` maps workflows to their namespace and labels (a
    workflow missing from it is taken to be in ``default``, unlabelled)."""

    def periods(workflow: str) -> Mapping[DataClass, timedelta]:
        return effective(targets.get(workflow) or Target("Workflow", workflow)).retention

    return periods


def model_retention_for(
    effective: Callable[[Target], EffectivePolicy], target_of: Callable[[str], Target]
) -> RetentionFor:
    """Each Model's effective retention by name (``target_of``: its namespace and labels): the ``payload_logs``
    period of the Policies selecting a Model purges its predictions' payload logs, which belong to no workflow."""

    def periods(model: str) -> Mapping[DataClass, timedelta]:
        return effective(target_of(model)).retention

    return periods


def _periods(policies: Iterable[Policy], data_class: DataClass) -> list[timedelta]:
    found = []
    for policy in policies:
        retention = policy.spec.retention
        text = getattr(retention, data_class) if retention is not None else None
        if text is not None:
            found.append(parse_duration(text))
    return found


def audit_period(policies: Iterable[Policy]) -> timedelta | None:
    """How long the audit log is kept: the longest ``retention.audit`` of any Policy; None (kept) when none says."""
    periods = _periods(policies, "audit")
    return max(periods) if periods else None


def shared_period(policies: Iterable[Policy], data_class: DataClass) -> timedelta | None:
    """The period of a store every workflow's data of ``data_class`` goes through (a topic): the shortest any
    Policy asks for; None when none says."""
    periods = _periods(policies, data_class)
    return min(periods) if periods else None


def connectors_called(spec: WorkflowSpec) -> set[str]:
    """The Connectors a workflow sends data to: its connector steps' and its agents' connector actions."""
    called = {step.connector.name for step in spec.steps if step.connector is not None}
    for step in spec.steps:
        if step.agent is not None:
            called.update(action.connector.name for action in step.agent.actions if action.connector is not None)
    return called


def sink_periods(workflows: Mapping[str, WorkflowSpec], periods: RetentionFor) -> dict[str, timedelta]:
    """Per Connector (by name), how long a topic it publishes to keeps records: the shortest ``results``
    retention of the workflows that send to it (strictest wins: one topic holds every publisher's results). A
    Connector none of whose workflows sets one is left out (kept as the broker keeps it)."""
    found: dict[str, timedelta] = {}
    for workflow, spec in workflows.items():
        period = periods(workflow).get("results")
        if period is None:
            continue
        for connector in connectors_called(spec):
            found[connector] = min(period, found.get(connector, period))
    return found
