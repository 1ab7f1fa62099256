"""Folds what the children report into ``Model.status``: conditions with reasons and messages, replicas per
version, and the endpoints (version, URL, weight) that the gateway routes by. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crds.base import Condition
from crds.model import Endpoint, Model, ModelStatus, VersionReplicas
from operators.model import version_rollout
from operators.model.plan import Observed, Plan
from operators.model.rollout import ACTIVE_PHASES

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
ROLLED_BACK = "RolledBack"


@dataclass(frozen=True)
class Conditions:
    """Makes conditions whose ``lastTransitionTime`` only moves when their status flips, as Kubernetes asks."""

    previous: list[Condition]
    generation: int
    now: datetime

    def __call__(self, type_: str, status: bool, reason: str, message: str = "") -> Condition:
        value = "True" if status else "False"
        old = next((c for c in self.previous if c.type == type_), None)
        since = old.last_transition_time if old is not None and old.status == value else self.now
        return Condition(
            type=type_,
            status=value,
            reason=reason,
            message=message,
            last_transition_time=since,
            observed_generation=self.generation,
        )


def invalid(status: ModelStatus | None, generation: int, problems: list[str], now: datetime) -> ModelStatus:
    """Status of a Model whose spec cannot be served: the children are left as they were."""
    previous = status or ModelStatus()
    message = "; ".join(problems)
    make = Conditions(previous.conditions, generation, now)
    return previous.model_copy(
        update={
            "observed_generation": generation,
            "conditions": [
                make(READY, False, "InvalidSpec", message),
                make(PROGRESSING, False, "InvalidSpec", message),
                make(DEGRADED, True, "InvalidSpec", message),
                _rolled_back(previous, make),
            ],
        }
    )


def _rolled_back(previous: ModelStatus, make: Conditions, message: str = "") -> Condition:
    rollout = previous.rollout
    if rollout is not None and rollout.phase == "RolledBack":
        return make(ROLLED_BACK, True, rollout.reason or "AnalysisFailed", message or rollout.message)
    return make(ROLLED_BACK, False, "NoRollback")


def fold(
    model: Model,
    *,
    generation: int,
    plan: Plan,
    observed: dict[str, Observed],
    urls: dict[str, str],
    now: datetime,
) -> ModelStatus:
    previous = model.status or ModelStatus()
    previous = previous.model_copy(update={"rollout": plan.rollout})
    live = sorted(plan.live, key=lambda v: (-plan.weights.get(v, 0), v))
    replicas = [
        VersionReplicas(
            version=v,
            desired=observed[v].desired if v in observed else 0,
            ready=observed[v].ready if v in observed else 0,
        )
        for v in live
    ]
    endpoints = [
        Endpoint(version=v, url=urls[v], weight=plan.weights.get(v, 0))
        for v in live
        if v in observed and observed[v].ready > 0 and v in urls
    ]
    # The version that answers for the model: the previous stable one until its successor is ready.
    serving = next(iter(sorted(plan.keep)), plan.stable.version)
    stable_seen = observed.get(serving)
    pending = {v: o.unschedulable for v, o in observed.items() if v in plan.live and o.unschedulable}
    refused = {v: o.replica_failure for v, o in observed.items() if v in plan.live and o.replica_failure}
    stuck = sorted(v for v, o in observed.items() if v in plan.live and o.deadline_exceeded)
    starting = sorted(v for v in plan.live if v not in plan.keep and not (v in observed and observed[v].fully_ready))
    rollout = plan.rollout
    rolling = rollout is not None and rollout.phase in ACTIVE_PHASES and plan.canary is not None

    # A new spec.version whose rollout was rolled back or aborted: the spec asks for what does not serve.
    held = version_rollout.held_back(model, rollout, serving)
    make = Conditions(previous.conditions, generation, now)
    if model.spec.min_replicas == 0 and plan.canary is None:
        ready = make(READY, False, "ScaledToZero", "minReplicas is 0: no replica serves")
    elif stable_seen is not None and stable_seen.ready > 0 and stable_seen.ready >= stable_seen.desired:
        ready = make(READY, True, "Serving", f"version {serving}: {stable_seen.ready} ready")
    elif serving in pending:
        ready = make(READY, False, "Unschedulable", f"version {serving}: {pending[serving]}")
    elif serving in refused:
        ready = make(READY, False, "ReplicaFailure", f"version {serving}: {refused[serving]}")
    else:
        have = stable_seen.ready if stable_seen else 0
        want = stable_seen.desired if stable_seen else max(model.spec.min_replicas, 1)
        ready = make(READY, False, "ReplicasNotReady", f"version {serving}: {have}/{want} ready")

    if rolling and rollout is not None:
        reason = {"Paused": "RolloutPaused", "AwaitingApproval": "AwaitingApproval"}.get(rollout.phase, "RollingOut")
        message = f"{rollout.message}; {plan.note}" if plan.note else rollout.message
        progressing = make(PROGRESSING, True, reason, message)
    elif starting:
        message = ", ".join(f"version {v}: {observed[v].ready if v in observed else 0} ready" for v in starting)
        progressing = make(PROGRESSING, True, "ReplicasStarting", message)
    else:
        progressing = make(PROGRESSING, False, "Stable", "every live version is ready")

    if pending:
        message = "; ".join(f"version {v}: {m}" for v, m in sorted(pending.items()))
        degraded = make(DEGRADED, True, "Unschedulable", message)
    elif refused:
        message = "; ".join(f"version {v}: {m}" for v, m in sorted(refused.items()))
        degraded = make(DEGRADED, True, "ReplicaFailure", message)
    elif stuck:
        message = f"version {', '.join(stuck)}: the Deployment exceeded its progress deadline"
        degraded = make(DEGRADED, True, "ProgressDeadlineExceeded", message)
    elif held is not None:
        degraded = make(DEGRADED, True, *held)
    else:
        degraded = make(DEGRADED, False, "AsExpected", "")

    canary_version = plan.canary.version if plan.canary is not None else None
    return previous.model_copy(
        update={
            "observed_generation": generation,
            "conditions": [ready, progressing, degraded, _rolled_back(previous, make, held[1] if held else "")],
            "stable_version": serving,
            "canary_version": canary_version,
            "canary_weight": plan.weights.get(canary_version, 0) if canary_version is not None else None,
            "endpoints": endpoints,
            "replicas": replicas,
        }
    )


def to_patch(status: ModelStatus) -> dict[str, Any]:
    """The status as a merge patch body: absent optional fields are sent as null, so stale values are removed."""
    body: dict[str, Any] = status.model_dump(by_alias=True, mode="json")
    return body
