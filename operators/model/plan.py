"""What should run: from a Model, its last status and what its Deployments report, the live versions, their
replica counts and traffic weights, and the next rollout state. Pure, like the builders."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from crds.model import Model, Rollout
from operators.model import builders, gpus, promotion
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
    replica_failure: str | None = None
    # The bento and image its pods run (builders.served); None: not known.
    served: tuple[str, str] | None = None

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
    # False while a GPU-constrained rollout moves replicas by hand: the autoscaler would undo every move.
    autoscale: bool = True
    note: str = ""

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
    gpu_room: gpus.Room | None = None,
    approval: promotion.Seen | None = None,
    approval_required: bool | None = None,
) -> Plan:
    spec = model.spec
    status = model.status
    hpa_managed = builders.autoscaled(model)
    stable = LiveVersion(spec.version, spec.bento, spec.image or image, None if hpa_managed else spec.min_replicas)
    canary: LiveVersion | None = None
    rollout = status.rollout if status is not None else None
    event: rollouts.Event | None = None
    canary_weight = 0
    autoscale = hpa_managed
    note = ""
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
            approval=approval,
            approval_required=approval_required,
        )
        rollout, event = decision.rollout, decision.event
        canary_spec = LiveVersion(wanted.version, wanted.bento or spec.bento, wanted.image or spec.image or image, None)
        if rollout.phase == "Promoted":
            stable = LiveVersion(canary_spec.version, canary_spec.bento, canary_spec.image, stable.replicas)
        elif rollout.phase in rollouts.ACTIVE_PHASES:
            canary_weight = rollouts.weight(wanted, rollout)
            stable_seen = observed.get(stable.version)
            capacity = rollout.stable_replicas or max(spec.min_replicas, stable_seen.desired if stable_seen else 0, 1)
            replicas = max(1, math.ceil(capacity * canary_weight / 100))
            gpu = spec.resources.gpu
            per_replica = gpu.count if gpu is not None else 0
            canary_seen = observed.get(wanted.version)
            if per_replica and gpu_room is not None and rollout.stable_replicas is None:
                more = replicas - (canary_seen.desired if canary_seen else 0)
                if more * per_replica > gpu_room.usable:
                    rollout = rollout.model_copy(update={"stable_replicas": capacity})
            if rollout.stable_replicas is not None and gpu_room is not None:
                split = gpus.shift(
                    capacity=capacity,
                    weight=canary_weight,
                    gpus_per_replica=per_replica,
                    room=gpu_room,
                    stable_desired=stable_seen.desired if stable_seen else capacity,
                    stable_ready=stable_seen.ready if stable_seen else 0,
                    canary_desired=canary_seen.desired if canary_seen else 0,
                    canary_ready=canary_seen.ready if canary_seen else 0,
                )
                stable = LiveVersion(stable.version, stable.bento, stable.image, split.stable)
                replicas = split.canary
                autoscale = False
                note = (
                    f"GPUs are short ({gpu_room.describe()}): moving replicas one at a time, "
                    f"stable {split.stable}, canary {split.canary} of {capacity}"
                )
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
    return Plan(
        stable=stable,
        canary=canary,
        weights=weights,
        keep=keep,
        rollout=rollout,
        event=event,
        autoscale=autoscale,
        note=note,
    )
