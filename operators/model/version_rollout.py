"""A change of ``spec.version`` under ``spec.rollout``, seen as the canary rollout it is. Pure.

With ``spec.rollout``, ``spec.version`` is the version the user wants and ``status.stableVersion`` the one that
serves. While they differ, the reconcile plans an equivalent Model whose stable version is the serving one, as its
Deployment runs it (bento and image: the spec already names the new ones), and whose ``spec.canary`` is the new
version with ``spec.rollout``'s steps, interval, analysis and promotion. So a version rollout is a canary rollout
in every respect (analysis, approvals, GPU-aware shifting, pause and abort, rollback), and its state is the same
``status.rollout``. Promoted, the new version becomes ``status.stableVersion``, equal to ``spec.version``: nothing
is left to edit. Rolled back or aborted, the state names ``spec.version``, so the same rollout never starts again;
only another ``spec.version`` starts one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crds.model import Canary, Model, Rollout
from operators.model.plan import Observed

# How a version rollout can end short of promotion, and the Degraded reason that says so.
_HELD_BACK = {"RolledBack": "RolledBack", "Aborted": "RolloutAborted"}


def rolling_from(model: Model) -> str | None:
    """The serving version a new ``spec.version`` rolls out from, or None when no version rollout applies: no
    ``spec.rollout`` (a new version then takes over once ready), an explicit ``spec.canary``, a first version, or
    ``spec.version`` already serving."""
    spec, status = model.spec, model.status
    stable = status.stable_version if status is not None else None
    if spec.rollout is None or spec.canary is not None or stable is None or stable == spec.version:
        return None
    return stable


def as_canary(model: Model, observed: Mapping[str, Observed], image: str) -> Model:
    """``model`` as the canary rollout its version change is (see the module); ``model`` itself when none applies.

    ``image``: the serving image of a spec without one. A serving version whose Deployment is gone, or was not
    made by this operator, cannot be kept as it runs: the new version then takes over once ready, as without
    ``spec.rollout``.
    """
    stable = rolling_from(model)
    strategy = model.spec.rollout
    if stable is None or strategy is None:
        return model
    running = observed.get(stable)
    if running is None or running.served is None:
        return model
    spec = model.spec
    bento, stable_image = running.served
    canary = Canary(
        version=spec.version,
        bento=spec.bento,
        image=spec.image or image,
        steps=list(strategy.steps),
        interval=strategy.interval,
        analysis=strategy.analysis,
        promotion=strategy.promotion,
    )
    as_stable = spec.model_copy(
        update={"version": stable, "bento": bento, "image": stable_image, "canary": canary, "rollout": None}
    )
    return model.model_copy(update={"spec": as_stable})


def held_back(model: Model, rollout: Rollout | None, serving: str) -> tuple[str, str] | None:
    """Why ``spec.version`` does not serve after its rollout ended short of promotion: a reason (``RolledBack``,
    ``RolloutAborted``) and a message naming the version, what happened and what to do; None otherwise."""
    spec = model.spec
    if spec.rollout is None or spec.canary is not None or serving == spec.version:
        return None
    if rollout is None or rollout.version != spec.version or rollout.phase not in _HELD_BACK:
        return None
    message = (
        f"spec.version {spec.version} does not serve: {rollout.message}; {serving} serves all traffic. "
        f"Set spec.version back to {serving}, or to a fixed version, to roll out again"
    )
    return _HELD_BACK[rollout.phase], message


def ticking(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Whether the rollout clock ticks for a Model (its raw spec and status): while it has a ``spec.canary``, and
    while a new ``spec.version`` rolls out under ``spec.rollout``, until that rollout ends."""
    if spec.get("canary") is not None:
        return True
    version, stable = spec.get("version"), status.get("stableVersion")
    if spec.get("rollout") is None or stable is None or stable == version:
        return False
    rollout = status.get("rollout") or {}
    return not (rollout.get("version") == version and rollout.get("phase") in _HELD_BACK)
