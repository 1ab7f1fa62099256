"""What should run: from a Model, its last status and what its Deployments report, the live versions, their
replica counts and traffic weights, and the next rollout state. Pure, like the builders."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from crds.model import Model, Rollout
from operators.model import rollout as rollouts
from operators.model.builders import LiveVersion


@dataclass(frozen=True)
class Observed:
    """One version's Deployment as the operator last saw it (its status, and why pods are pending)."""

    version: str
    desired: int
    ready: int
    updated: int = 0
    up_to_date: bool = True
    deadline_exceeded: bool = False
    unschedulable: str | None = None

    @property
    def fully_ready(self) -> bool:
        return self.desired >= 1 and self.ready >= self.desired and self.up_to_date


@dataclass(frozen=True)
class Plan:
    stable: LiveVersion
    canary: LiveVersion | None
    weights: dict[str, int]
    # Versions whose children stay although nothing applies them any more: the previous stable version, until
    # the new one is ready to take its traffic.
    keep: frozenset[str] = field(default_factory=frozenset)
    rollout: Rollout | None = None
    event: rollouts.Event | None = None

    @property
    def live(self) -> frozenset[str]:
        versions = {self.stable.version, *self.keep}
        if self.canary is not None:
            versions.add(self.canary.version)
        return frozenset(versions)


def plan(
    model: Model,
    image: str,
    observed: dict[str, Observed],
    *,
    now: datetime,
    control: rollouts.Control = None,
    verdict: rollouts.Verdict | None = None,
) -> Plan:
    spec = model.spec
    status = model.status
    hpa_managed = spec.min_replicas >= 1
    stable = LiveVersion(spec.version, spec.bento, spec.image or image, None if hpa_managed else 0)
    canary: LiveVersion | None = None
    rollout = status.rollout if status is not None else None
    event: rollouts.Event | None = None
    canary_weight = 0
    if spec.canary is not None:
        wanted = spec.canary
        seen = observed.get(wanted.version)
        decision = rollouts.advance(
            wanted,
            rollout,
            now=now,
            canary_ready=seen is not None and seen.fully_ready,
            control=control,
            verdict=verdict,
        )
        rollout, event = decision.rollout, decision.event
        canary_spec = LiveVersion(wanted.version, wanted.bento or spec.bento, wanted.image or spec.image or image, None)
        if rollout.phase == "Promoted":
            stable = LiveVersion(canary_spec.version, canary_spec.bento, canary_spec.image, stable.replicas)
        elif rollout.phase in rollouts.ACTIVE_PHASES:
            canary_weight = rollouts.weight(wanted, rollout)
            stable_seen = observed.get(stable.version)
            capacity = max(spec.min_replicas, stable_seen.desired if stable_seen else 0, 1)
            replicas = max(1, math.ceil(capacity * canary_weight / 100))
            canary = LiveVersion(canary_spec.version, canary_spec.bento, canary_spec.image, replicas)
    weights = {stable.version: 100 - canary_weight}
    if canary is not None:
        weights[canary.version] = canary_weight
    keep: frozenset[str] = frozenset()
    previous = status.stable_version if status is not None else None
    new_stable = observed.get(stable.version)
    if (
        previous is not None
        and previous != stable.version
        and previous in observed
        and not (new_stable is not None and new_stable.fully_ready)
    ):
        # A new stable version without a canary: the old one keeps all traffic until the new one is ready.
        keep = frozenset({previous})
        weights = {previous: 100 - canary_weight, stable.version: 0}
        if canary is not None:
            weights[canary.version] = canary_weight
    return Plan(stable=stable, canary=canary, weights=weights, keep=keep, rollout=rollout, event=event)
