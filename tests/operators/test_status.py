"""Planning (live versions, replicas, weights) and folding children's state into status, without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crds.model import Model
from operators.model import plan as plans
from operators.model import status as statuses
from operators.model.plan import Observed
from operators.model.rollout import Verdict
from tests.operators.models import model

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CANARY = {"version": "2.0.0", "steps": [10, 50, 100], "interval": "1m"}


def fold(m: Model, observed: dict[str, Observed], now: datetime = T0, **kw: object) -> tuple[plans.Plan, Model]:
    p = plans.plan(m, "img", observed, now=now, **kw)  # type: ignore[arg-type]
    urls = {v: f"http://{v}" for v in p.live}
    status = statuses.fold(m, generation=1, plan=p, observed=observed, urls=urls, now=now)
    return p, m.model_copy(update={"status": status})


def cond(m: Model, type_: str) -> tuple[str, str, str]:
    assert m.status is not None
    c = next(c for c in m.status.conditions if c.type == type_)
    return c.status, c.reason, c.message


def test_a_ready_model_serves_all_traffic_from_its_version() -> None:
    _, m = fold(model(), {"1.0.0": Observed("1.0.0", desired=1, ready=1)})
    assert m.status is not None
    assert [(e.version, e.url, e.weight) for e in m.status.endpoints] == [("1.0.0", "http://1.0.0", 100)]
    assert cond(m, "Ready")[:2] == ("True", "Serving")
    assert cond(m, "Progressing")[:2] == ("False", "Stable")
    assert cond(m, "Degraded")[:2] == ("False", "AsExpected")
    assert m.status.observed_generation == 1
    assert [(r.version, r.desired, r.ready) for r in m.status.replicas] == [("1.0.0", 1, 1)]


def test_no_endpoint_before_a_replica_is_ready() -> None:
    _, m = fold(model(), {})
    assert m.status is not None
    assert m.status.endpoints == []
    assert cond(m, "Ready")[:2] == ("False", "ReplicasNotReady")
    assert cond(m, "Progressing")[:2] == ("True", "ReplicasStarting")


def test_an_unschedulable_pod_surfaces_the_schedulers_message() -> None:
    message = "0/5 nodes are available: 5 Insufficient nvidia.com/gpu."
    _, m = fold(model(), {"1.0.0": Observed("1.0.0", desired=1, ready=0, unschedulable=message)})
    assert cond(m, "Ready") == ("False", "Unschedulable", f"version 1.0.0: {message}")
    assert cond(m, "Degraded") == ("True", "Unschedulable", f"version 1.0.0: {message}")


def test_transition_time_moves_only_when_a_condition_flips() -> None:
    _, m = fold(model(), {})
    _, m = fold(m, {}, now=T0 + timedelta(minutes=1))
    assert m.status is not None
    assert next(c for c in m.status.conditions if c.type == "Ready").last_transition_time == T0
    _, m = fold(m, {"1.0.0": Observed("1.0.0", 1, 1)}, now=T0 + timedelta(minutes=2))
    assert m.status is not None
    assert next(c for c in m.status.conditions if c.type == "Ready").last_transition_time == T0 + timedelta(minutes=2)


def test_a_new_version_without_canary_keeps_the_old_one_serving_until_ready() -> None:
    _, m = fold(model(), {"1.0.0": Observed("1.0.0", 1, 1)})
    m = m.model_copy(update={"spec": m.spec.model_copy(update={"version": "1.1.0"})})
    p, m = fold(m, {"1.0.0": Observed("1.0.0", 1, 1), "1.1.0": Observed("1.1.0", 1, 0)})
    assert p.live == {"1.0.0", "1.1.0"}
    assert p.weights == {"1.0.0": 100, "1.1.0": 0}
    assert m.status is not None
    assert m.status.stable_version == "1.0.0"
    p, m = fold(m, {"1.0.0": Observed("1.0.0", 1, 1), "1.1.0": Observed("1.1.0", 1, 1)})
    assert p.live == {"1.1.0"}  # the old version's children are removed now
    assert m.status is not None
    assert m.status.stable_version == "1.1.0"
    assert [(e.version, e.weight) for e in m.status.endpoints] == [("1.1.0", 100)]


def test_canary_weights_replicas_and_promotion() -> None:
    m = model(canary=CANARY, minReplicas=2, maxReplicas=4)
    stable = Observed("1.0.0", 4, 4)
    p, m = fold(m, {"1.0.0": stable})
    assert p.canary is not None
    assert p.canary.replicas == 1
    assert p.weights == {"1.0.0": 100, "2.0.0": 0}
    p, m = fold(m, {"1.0.0": stable, "2.0.0": Observed("2.0.0", 1, 1)}, now=T0 + timedelta(seconds=1))
    assert p.weights == {"1.0.0": 90, "2.0.0": 10}
    assert cond(m, "Progressing")[:2] == ("True", "RollingOut")
    assert m.status is not None
    assert m.status.canary_weight == 10
    passed = Verdict(True)
    p, m = fold(m, {"1.0.0": stable, "2.0.0": Observed("2.0.0", 1, 1)}, now=T0 + timedelta(minutes=2), verdict=passed)
    assert p.weights == {"1.0.0": 50, "2.0.0": 50}
    assert p.canary is not None
    assert p.canary.replicas == 2  # half the stable version's 4 replicas
    both = {"1.0.0": stable, "2.0.0": Observed("2.0.0", 2, 2)}
    p, m = fold(m, both, now=T0 + timedelta(minutes=4), verdict=passed)
    p, m = fold(m, {**both, "2.0.0": Observed("2.0.0", 4, 4)}, now=T0 + timedelta(minutes=6), verdict=passed)
    assert m.status is not None
    assert m.status.rollout is not None
    assert m.status.rollout.phase == "Promoted"
    assert p.stable.version == "2.0.0"
    assert p.stable.replicas is None  # the autoscaler takes the promoted version over
    assert p.live == {"2.0.0"}
    assert m.status.stable_version == "2.0.0"
    assert m.status.canary_version is None
    assert [(e.version, e.weight) for e in m.status.endpoints] == [("2.0.0", 100)]


def test_rollback_sends_all_traffic_to_stable_and_says_why() -> None:
    m = model(canary=CANARY)
    ready = {"1.0.0": Observed("1.0.0", 1, 1), "2.0.0": Observed("2.0.0", 1, 1)}
    _, m = fold(m, ready)
    _, m = fold(m, ready, now=T0 + timedelta(seconds=1))
    failed = Verdict(False, "p99-latency-ms", 2300.0, 1000)
    p, m = fold(m, ready, now=T0 + timedelta(seconds=20), verdict=failed)
    assert p.event is not None
    assert p.event.type == "Warning"
    assert p.live == {"1.0.0"}
    assert m.status is not None
    assert [(e.version, e.weight) for e in m.status.endpoints] == [("1.0.0", 100)]
    status, reason, message = cond(m, "RolledBack")
    assert (status, reason) == ("True", "AnalysisFailed")
    assert "p99-latency-ms 2300 above the threshold 1000" in message


def test_invalid_spec_keeps_everything_else_and_explains() -> None:
    _, m = fold(model(), {"1.0.0": Observed("1.0.0", 1, 1)})
    status = statuses.invalid(m.status, 2, ["spec.resources.cpu: 'x' is not a Kubernetes quantity"], T0)
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "InvalidSpec")
    assert "spec.resources.cpu" in ready.message
    assert status.observed_generation == 2
    assert status.endpoints == m.status.endpoints if m.status else False


def test_pods_the_namespace_refuses_surface_the_deployments_reason() -> None:
    refusal = 'pods "m-1-0-0-x" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=1'
    _, m = fold(model(), {"1.0.0": Observed("1.0.0", desired=1, ready=0, replica_failure=refusal)})
    assert cond(m, "Ready") == ("False", "ReplicaFailure", f"version 1.0.0: {refusal}")
    assert cond(m, "Degraded") == ("True", "ReplicaFailure", f"version 1.0.0: {refusal}")
