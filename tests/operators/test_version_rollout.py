"""A new ``spec.version`` under ``spec.rollout``: rolled out as a canary of the serving version, promoted into
``status.stableVersion``, or rolled back and left rolled back. The decisions, without a cluster: each ``run`` is
what one reconcile plans and writes to status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from crds.model import Model, ModelStatus
from operators.model import builders, promotion, validation, version_rollout
from operators.model import plan as plans
from operators.model import status as statuses
from operators.model.builders import LiveVersion, Owner
from operators.model.gpus import Room
from operators.model.plan import Observed
from operators.model.rollout import Control, Verdict

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OLD = ("service:ClaimsV1", "registry/claims:1")
NEW_BENTO = "service:ClaimsV2"
DEFAULT_IMAGE = "registry/aiplane:serving"
ROLLOUT = {"steps": [10, 50, 100], "interval": "1m"}
PASS, FAIL = Verdict(True, detail="fine"), Verdict(False, "error-rate", 0.5, 0.1, "5 of 10 requests failed")


def model(version: str = "1.0.0", bento: str = OLD[0], *, status: Any = None, **spec: Any) -> Model:
    body: dict[str, Any] = {
        "metadata": {"name": "claims", "namespace": "ns", "uid": "u-1", "generation": 2},
        "spec": {"bento": bento, "version": version, "image": OLD[1] if bento == OLD[0] else None, **spec},
    }
    if status is not None:
        body["status"] = status
    return Model.model_validate(body)


def serving(m: Model, version: str = "1.0.0") -> Model:
    """``m`` as the operator left it once ``version`` served alone."""
    return m.model_copy(update={"status": ModelStatus(stable_version=version)})


def ready(version: str, served: tuple[str, str] | None = OLD, replicas: int = 1) -> Observed:
    return Observed(version, desired=replicas, ready=replicas, served=served)


@dataclass(frozen=True)
class Run:
    plan: plans.Plan
    model: Model  # the declared Model with the status this run wrote

    def weights(self) -> dict[str, int]:
        assert self.model.status is not None
        return {e.version: e.weight for e in self.model.status.endpoints}

    def condition(self, type_: str) -> tuple[str, str, str]:
        assert self.model.status is not None
        c = next(c for c in self.model.status.conditions if c.type == type_)
        return c.status, c.reason, c.message


def run(
    m: Model,
    observed: dict[str, Observed],
    now: datetime = T0,
    *,
    verdict: Verdict | None = None,
    control: Control = None,
    gpu_room: Room | None = None,
) -> Run:
    """One reconcile as ``Reconciler._converge`` makes it: plan the Model as the canary its version change is,
    fold the status against the Model as declared."""
    planned = version_rollout.as_canary(m, observed, DEFAULT_IMAGE)
    p = plans.plan(
        planned, planned.spec.image or DEFAULT_IMAGE, observed, now=now, verdict=verdict, control=control,
        gpu_room=gpu_room,
    )  # fmt: skip
    urls = {v: f"http://{v}" for v in p.live}
    status = statuses.fold(m, generation=2, plan=p, observed=observed, urls=urls, now=now)
    return Run(p, m.model_copy(update={"status": status}))


def changed(m: Model, version: str, bento: str = NEW_BENTO) -> Model:
    """The user's edit: a new version (and the bento that is it), the status as the operator left it."""
    return m.model_copy(update={"spec": m.spec.model_copy(update={"version": version, "bento": bento, "image": None})})


def rolled_out(verdict: Verdict = PASS) -> tuple[Model, list[Run]]:
    """1.0.0 serving, spec.version set to 2.0.0; reconciles every minute with ``verdict`` until the rollout ends."""
    m = changed(serving(model(rollout=ROLLOUT)), "2.0.0")
    runs = [run(m, {"1.0.0": ready("1.0.0")})]
    observed = {"1.0.0": ready("1.0.0"), "2.0.0": ready("2.0.0", (NEW_BENTO, DEFAULT_IMAGE))}
    for minute in range(1, 8):
        last = runs[-1]
        runs.append(run(last.model, observed, T0 + timedelta(minutes=minute), verdict=verdict))
        rollout = runs[-1].plan.rollout
        if rollout is not None and rollout.phase not in ("Progressing",):
            break
    return m, runs


def test_without_spec_rollout_a_new_version_takes_over_once_ready() -> None:
    m = changed(serving(model()), "2.0.0")
    assert version_rollout.as_canary(m, {"1.0.0": ready("1.0.0")}, DEFAULT_IMAGE) is m
    first = run(m, {"1.0.0": ready("1.0.0")})
    assert first.plan.canary is None
    assert first.weights() == {"1.0.0": 100}
    switched = run(first.model, {"1.0.0": ready("1.0.0"), "2.0.0": ready("2.0.0", None)})
    assert switched.weights() == {"2.0.0": 100}
    assert switched.plan.live == {"2.0.0"}


def test_a_new_version_comes_up_as_a_canary_of_the_serving_one_as_it_runs() -> None:
    m = changed(serving(model(rollout=ROLLOUT)), "2.0.0")
    first = run(m, {"1.0.0": ready("1.0.0")})
    # The serving version keeps its bento and image although the spec names the new version's now.
    assert first.plan.stable == LiveVersion("1.0.0", *OLD, 1)
    assert first.plan.canary == LiveVersion("2.0.0", NEW_BENTO, DEFAULT_IMAGE, 1)
    assert first.plan.event is not None
    assert first.plan.event.reason == "RolloutStarted"
    assert first.plan.weights == {"1.0.0": 100, "2.0.0": 0}
    status = first.model.status
    assert status is not None
    assert (status.stable_version, status.canary_version, status.canary_weight) == ("1.0.0", "2.0.0", 0)
    assert first.condition("Progressing")[:2] == ("True", "RollingOut")
    assert first.condition("Degraded")[:2] == ("False", "AsExpected")
    owner = Owner("claims", "ns", "u-1")
    planned = version_rollout.as_canary(m, {"1.0.0": ready("1.0.0")}, DEFAULT_IMAGE)
    stable = builders.deployment(planned, owner, first.plan.stable)
    assert builders.served(stable["spec"]) == OLD


def test_the_weight_moves_through_the_steps_and_the_new_version_is_promoted_into_stable() -> None:
    _, runs = rolled_out(PASS)
    weights = [r.plan.weights.get("2.0.0") for r in runs]
    assert weights == [0, 10, 50, 100, 100]
    assert [r.plan.event.reason if r.plan.event else None for r in runs] == [
        "RolloutStarted",
        "RolloutStep",
        "RolloutStep",
        "RolloutStep",
        "RolloutPromoted",
    ]
    promoted = runs[-1].model
    assert promoted.status is not None
    assert promoted.status.stable_version == "2.0.0" == promoted.spec.version
    assert promoted.status.canary_version is None
    assert runs[-1].plan.live == {"2.0.0"}
    # Nothing is left to edit: the next reconcile plans 2.0.0 from the spec alone, as it ran as the canary.
    assert version_rollout.rolling_from(promoted) is None
    after = run(promoted, {"2.0.0": ready("2.0.0", (NEW_BENTO, DEFAULT_IMAGE))}, T0 + timedelta(minutes=9))
    assert after.plan.stable == runs[-1].plan.stable == LiveVersion("2.0.0", NEW_BENTO, DEFAULT_IMAGE, 1)
    assert after.plan.event is None
    assert after.weights() == {"2.0.0": 100}
    assert after.condition("Degraded")[:2] == ("False", "AsExpected")
    assert not version_rollout.ticking(after.model.spec.model_dump(by_alias=True), _raw_status(after.model))


def test_a_failing_analysis_rolls_back_and_the_rollout_is_not_started_again() -> None:
    _, runs = rolled_out(FAIL)
    rolled = runs[-1]
    assert rolled.plan.rollout is not None
    assert rolled.plan.rollout.phase == "RolledBack"
    assert rolled.plan.event is not None
    assert rolled.plan.event.reason == "RolloutRolledBack"
    assert rolled.weights() == {"1.0.0": 100}
    assert rolled.plan.live == {"1.0.0"}
    status, reason, message = rolled.condition("RolledBack")
    assert (status, reason) == ("True", "AnalysisFailed")
    assert "rolled back 2.0.0 at 10%: error-rate 0.5 above the threshold 0.1" in message
    assert "Set spec.version back to 1.0.0, or to a fixed version" in message
    degraded = rolled.condition("Degraded")
    assert degraded[:2] == ("True", "RolledBack")
    assert degraded[2].startswith("spec.version 2.0.0 does not serve: rolled back 2.0.0 at 10%")
    # The old version keeps serving as it ran, reconcile after reconcile: no canary, no event, no new rollout.
    model = rolled.model
    for minute in range(10, 40, 5):
        again = run(model, {"1.0.0": ready("1.0.0")}, T0 + timedelta(minutes=minute))
        assert again.plan.canary is None
        assert again.plan.event is None
        assert again.plan.stable == LiveVersion("1.0.0", *OLD, 1)
        assert again.weights() == {"1.0.0": 100}
        assert again.model.status == model.status
        model = again.model
    assert not version_rollout.ticking(model.spec.model_dump(by_alias=True), _raw_status(model))


def test_after_a_rollback_a_new_version_starts_a_new_rollout_and_the_old_one_ends_the_degradation() -> None:
    _, runs = rolled_out(FAIL)
    rolled = runs[-1].model
    fixed = run(changed(rolled, "2.0.1"), {"1.0.0": ready("1.0.0")}, T0 + timedelta(minutes=10))
    assert fixed.plan.event is not None
    assert fixed.plan.event.reason == "RolloutStarted"
    assert fixed.plan.canary is not None
    assert fixed.plan.canary.version == "2.0.1"
    assert fixed.condition("Degraded")[:2] == ("False", "AsExpected")

    back = run(changed(rolled, "1.0.0", OLD[0]), {"1.0.0": ready("1.0.0")}, T0 + timedelta(minutes=10))
    assert back.plan.canary is None
    assert back.weights() == {"1.0.0": 100}
    assert back.condition("Degraded")[:2] == ("False", "AsExpected")


def test_another_version_mid_rollout_replaces_the_canary_and_keeps_the_stable_one() -> None:
    _, runs = rolled_out(Verdict(None))  # held at its first step: too little traffic to judge
    at_step = runs[-1].model
    assert runs[-1].plan.weights == {"1.0.0": 90, "2.0.0": 10}
    observed = {"1.0.0": ready("1.0.0"), "2.0.0": ready("2.0.0", (NEW_BENTO, DEFAULT_IMAGE))}
    third = run(changed(at_step, "3.0.0", "service:ClaimsV3"), observed, T0 + timedelta(minutes=10))
    assert third.plan.rollout is not None
    assert (third.plan.rollout.version, third.plan.rollout.step) == ("3.0.0", -1)
    assert third.plan.live == {"1.0.0", "3.0.0"}
    assert third.plan.stable == LiveVersion("1.0.0", *OLD, 1)


def test_abort_leaves_the_old_version_serving_and_says_so() -> None:
    _, runs = rolled_out(Verdict(None))
    aborted = run(runs[-1].model, {"1.0.0": ready("1.0.0")}, T0 + timedelta(minutes=10), control="abort")
    assert aborted.plan.rollout is not None
    assert aborted.plan.rollout.phase == "Aborted"
    assert aborted.weights() == {"1.0.0": 100}
    status, reason, message = aborted.condition("Degraded")
    assert (status, reason) == ("True", "RolloutAborted")
    assert "2.0.0 aborted by the user at 10%" in message
    assert aborted.condition("RolledBack")[:2] == ("False", "NoRollback")


def test_pause_holds_the_weight_and_resume_goes_on_from_the_same_step() -> None:
    _, runs = rolled_out(Verdict(None))
    observed = {"1.0.0": ready("1.0.0"), "2.0.0": ready("2.0.0", (NEW_BENTO, DEFAULT_IMAGE))}
    paused = run(runs[-1].model, observed, T0 + timedelta(minutes=10), control="pause")
    held = run(paused.model, observed, T0 + timedelta(minutes=20), verdict=PASS, control="pause")
    assert held.plan.rollout is not None
    assert (held.plan.rollout.phase, held.plan.weights) == ("Paused", {"1.0.0": 90, "2.0.0": 10})
    assert held.condition("Progressing")[:2] == ("True", "RolloutPaused")
    resumed = run(held.model, observed, T0 + timedelta(minutes=21), verdict=PASS, control="resume")
    stepped = run(resumed.model, observed, T0 + timedelta(minutes=22), verdict=PASS, control="resume")
    assert stepped.plan.weights == {"1.0.0": 50, "2.0.0": 50}


def test_a_serving_version_without_its_deployment_is_not_rolled_from() -> None:
    m = changed(serving(model(rollout=ROLLOUT)), "2.0.0")
    assert version_rollout.as_canary(m, {}, DEFAULT_IMAGE) is m
    assert version_rollout.as_canary(m, {"1.0.0": ready("1.0.0", None)}, DEFAULT_IMAGE) is m


def test_a_first_version_and_an_explicit_canary_are_not_version_rollouts() -> None:
    first = model(rollout=ROLLOUT)
    assert version_rollout.rolling_from(first) is None
    canary = model(canary={"version": "2.0.0"}, status={"stableVersion": "1.0.0"})
    assert version_rollout.rolling_from(canary) is None


def test_promotion_approval_and_gpu_shifting_apply_to_version_rollouts() -> None:
    gated = {**ROLLOUT, "promotion": {"approval": {"roles": ["approver"]}}}
    gpu = {"cpu": "1", "memory": "1Gi", "gpu": {"count": 4}}
    m = changed(serving(model(rollout=gated, resources=gpu, minReplicas=2, maxReplicas=3)), "2.0.0")
    planned = version_rollout.as_canary(m, {"1.0.0": ready("1.0.0", replicas=2)}, DEFAULT_IMAGE)
    request = promotion.request(planned, "1.0.0")
    assert request is not None
    assert (request.version, request.stable, request.roles) == ("2.0.0", "1.0.0", ("approver",))

    observed = {"1.0.0": ready("1.0.0", replicas=2)}
    started = run(m, observed, gpu_room=Room(free=0))
    tight = run(started.model, observed, T0 + timedelta(seconds=1), gpu_room=Room(free=0))
    assert tight.plan.rollout is not None
    assert tight.plan.rollout.stable_replicas == 2
    assert not tight.plan.autoscale
    assert tight.plan.stable == LiveVersion("1.0.0", *OLD, 2)
    assert "GPUs are short" in tight.condition("Progressing")[2]


def test_the_rollout_clock_ticks_only_while_a_version_rolls_out() -> None:
    spec = {"version": "2.0.0", "rollout": ROLLOUT}
    assert version_rollout.ticking({"version": "1.0.0", "canary": {"version": "2.0.0"}}, {})
    assert not version_rollout.ticking({"version": "2.0.0"}, {"stableVersion": "1.0.0"})
    assert not version_rollout.ticking(spec, {})
    assert not version_rollout.ticking(spec, {"stableVersion": "2.0.0"})
    assert version_rollout.ticking(spec, {"stableVersion": "1.0.0"})
    running = {"version": "2.0.0", "phase": "Progressing"}
    assert version_rollout.ticking(spec, {"stableVersion": "1.0.0", "rollout": running})
    for ended in ("RolledBack", "Aborted"):
        state = {"stableVersion": "1.0.0", "rollout": {**running, "phase": ended}}
        assert not version_rollout.ticking(spec, state)
        assert version_rollout.ticking({**spec, "version": "3.0.0"}, state)


def test_validation_refuses_canary_with_rollout_and_repeated_weights() -> None:
    both = model(canary={"version": "2.0.0"}, rollout=ROLLOUT)
    assert any("spec.canary and spec.rollout are both set" in p for p in validation.problems(both, "img"))
    repeated = model(rollout={"steps": [50, 50]})
    assert validation.problems(repeated, "img") == ["spec.rollout.steps [50, 50] repeats a weight"]
    repeated = model(canary={"version": "2.0.0", "steps": [50, 50]})
    assert validation.problems(repeated, "img") == ["spec.canary.steps [50, 50] repeats a weight"]


def test_served_reads_back_what_a_deployment_runs() -> None:
    m = model()
    built = builders.deployment(m, Owner("claims", "ns", "u-1"), LiveVersion("1.0.0", *OLD, 1))
    assert builders.served(built["spec"]) == OLD
    assert builders.served({"template": {"spec": {"containers": [{"name": "other", "image": "x"}]}}}) is None
    assert builders.served({}) is None


def _raw_status(m: Model) -> dict[str, Any]:
    assert m.status is not None
    raw: dict[str, Any] = m.status.model_dump(by_alias=True, mode="json")
    return raw
