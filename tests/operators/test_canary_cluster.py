"""Canary rollouts end to end: the operator on the test cluster, the gateway routing real requests by
``status.endpoints`` to real ``bentoml serve`` processes, Prometheus scraping the gateway, and the operator's
analysis reading Prometheus. A good canary is promoted, across a kill -9 of the operator; ones that fail, answer
slowly or drift on purpose are rolled back on their own, each rollback in the audit log."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aiplane.modelserver import ModelServer
from engine import Engine
from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually
from tests.fixtures.prometheus import Prometheus
from tests.operators.conftest import Gateway, Operator, wait_leading
from tests.operators.kube import apply, children, claims, condition, events, get, model_named
from tests.operators.serving import CLAIMS_ANALYSIS, traffic

MODEL = "claims-extractor"
CANARY_STEPS = [50, 100]


def canary_manifest(servers: dict[str, ModelServer], stable: str, canary: str, **analysis: Any) -> dict[str, Any]:
    """The claims Model at ``stable`` with a canary of ``canary``, its versions served by ``servers``; ``analysis``
    overrides thresholds."""
    manifest = claims(
        version=stable,
        canary={
            "version": canary,
            "steps": CANARY_STEPS,
            "interval": "4s",
            "analysis": {**CLAIMS_ANALYSIS, **analysis},
        },
    )
    urls = {version: server.url for version, server in servers.items()}
    manifest["metadata"]["annotations"]["aiplane.io/endpoint-urls"] = json.dumps(urls)
    return manifest


def rollout(cluster: Cluster, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = model_named(cluster, namespace, MODEL)["status"].get("rollout") or {}
    return found


ROLLOUT_REASONS = ("RolloutStarted", "RolloutStep", "RolloutPromoted")


def rollout_events(cluster: Cluster, namespace: str) -> list[tuple[str, str]]:
    """(reason, message) of each rollout Event of the Model; kopf names Events with generateName, so a decision
    announced twice is two objects here."""
    announced = []
    for item in get(cluster, namespace, "events")["items"]:
        if item["involvedObject"]["name"] == MODEL and item["reason"] in ROLLOUT_REASONS:
            announced.append((item["reason"], item["message"]))
    return announced


def kill_and_restart(cluster: Cluster, namespace: str, operator: Operator, start: Callable[..., Operator]) -> None:
    """Kill -9 the leading operator mid-rollout, start another, and watch it take the rollout on to promotion."""
    # An Event goes out after the status write it announces: one the kill loses would be no duplicate either.
    assert_eventually(
        lambda: any(reason == "RolloutStep" for reason, _ in rollout_events(cluster, namespace)),
        timeout=30,
        message="the step's Event",
    )
    operator.kill9()
    before = rollout(cluster, namespace)
    restarted = start("restarted")
    wait_leading(restarted)
    continues_to_promotion(cluster, namespace, before)


def continues_to_promotion(cluster: Cluster, namespace: str, before: dict[str, Any]) -> None:
    """Until the restarted operator promotes the canary, every look finds the rollout where the killed one left it
    or further on, never back: the step never drops, a step's clock (``stepStartedAt``) stays as long as the step,
    and no child is duplicated. The step's interval is several rollout ticks, so this
    watches at least two of the restarted operator's ticks."""
    last = before

    def promoted() -> bool:
        nonlocal last
        state = rollout(cluster, namespace)
        assert state["version"] == before["version"], (before, state)
        assert state["phase"] in ("Progressing", "Promoted"), state
        assert state["step"] >= last["step"], ("the rollout went back", last, state)
        if state["step"] == last["step"] and state["phase"] == last["phase"]:
            assert state["stepStartedAt"] == last["stepStartedAt"], ("the step's clock started over", last, state)
        last = state
        if state["phase"] == "Promoted":
            return True
        # One object per kind and version, and nothing of a version other than these two (the stable one's go
        # just before the status says Promoted, so a look may miss them).
        kids = children(cluster, namespace)
        for kind in ("deployments", "services", "poddisruptionbudgets"):
            versions = [k["metadata"]["labels"]["aiplane.io/version"] for k in kids[kind]]
            assert sorted(versions) in (["1.0.0", "2.0.0"], ["2.0.0"]), (kind, versions)
        assert len(kids["horizontalpodautoscalers"]) <= 1, kids["horizontalpodautoscalers"]
        return False

    # Anything but "not promoted yet" fails at once rather than being retried.
    assert_eventually(promoted, timeout=180, interval=0.25, retry_on=(), message="the rollout continued to promotion")
    assert last["step"] > before["step"] or before["step"] == len(CANARY_STEPS) - 1, (before, last)


def announced_once(cluster: Cluster, namespace: str) -> None:
    """One Event per decision of the rollout, across the kill: the restarted operator announced nothing again."""
    announced = Counter(rollout_events(cluster, namespace))
    assert announced[("RolloutStarted", "rolling out 2.0.0")] == 1, announced
    assert [m for reason, m in announced if reason == "RolloutPromoted"], announced
    assert set(announced.values()) == {1}, announced


def _rollback_counted(prometheus: Prometheus, ns: str) -> None:
    selector = f'{{namespace="{ns}",model="{MODEL}"}}'
    rollbacks = prometheus.query(f"sum(aiplane_operator_model_rollbacks_total{selector})")
    assert [r["value"][1] for r in rollbacks] == ["1"]
    weights = prometheus.query(f"aiplane_operator_model_traffic_weight_percent{selector}")
    assert {r["metric"]["version"]: r["value"][1] for r in weights} == {"2.0.0": "100"}


def test_a_good_canary_is_promoted_across_an_operator_kill_and_a_failing_one_rolls_back(
    crds_installed: Cluster,
    k8s_namespace: str,
    claims_servers: dict[str, ModelServer],
    gateway: Gateway,
    start_analysing_operator: Callable[..., Operator],
) -> None:
    cluster, ns, prometheus = crds_installed, k8s_namespace, gateway.prometheus
    operator = start_analysing_operator()
    wait_leading(operator)
    url, key = gateway.url, gateway.api_key

    apply(cluster, ns, canary_manifest(claims_servers, "1.0.0", "2.0.0"))
    with traffic(url, key, MODEL) as counts:
        # The canary comes up and takes its first step of traffic.
        assert_eventually(lambda: rollout(cluster, ns).get("step") == 0, timeout=120, message="canary at 50%")

        def split() -> None:
            # Both versions start together here, and the first step waits for the canary only: the stable
            # version's endpoint joins once its own replica is ready, which may come a moment later.
            endpoints = model_named(cluster, ns, MODEL)["status"]["endpoints"]
            assert {e["version"]: e["weight"] for e in endpoints} == {"1.0.0": 50, "2.0.0": 50}

        assert_eventually(split, timeout=60, message="traffic split 50/50")

        # Killed mid-rollout: the restarted operator goes on from the step it was at.
        kill_and_restart(cluster, ns, operator, start_analysing_operator)

        def promoted() -> None:
            state = rollout(cluster, ns)
            assert state.get("phase") == "Promoted", state
            status = model_named(cluster, ns, MODEL)["status"]
            assert status["stableVersion"] == "2.0.0"
            assert [(e["version"], e["weight"]) for e in status["endpoints"]] == [("2.0.0", 100)]
            deployments = children(cluster, ns)["deployments"]
            assert [d["metadata"]["labels"]["aiplane.io/version"] for d in deployments] == ["2.0.0"]

        assert_eventually(promoted, timeout=180, message="canary 2.0.0 promoted")
        assert counts.get("200", 0) > 0
        assert [e["message"] for e in events(cluster, ns, "RolloutPromoted")]
        assert_eventually(lambda: announced_once(cluster, ns), timeout=30, message="one Event per decision")

        # The next version fails every request: the analysis rolls it back and says why.
        apply(cluster, ns, canary_manifest(claims_servers, "2.0.0", "3.0.0"))

        def rolled_back() -> None:
            model = model_named(cluster, ns, MODEL)
            rolled = condition(model, "RolledBack")
            assert rolled["status"] == "True", rolled
            assert rolled["reason"] == "AnalysisFailed"
            assert "error-rate" in rolled["message"]
            assert "above the threshold 0.1" in rolled["message"]
            assert [(e["version"], e["weight"]) for e in model["status"]["endpoints"]] == [("2.0.0", 100)]

        assert_eventually(rolled_back, timeout=180, message="canary 3.0.0 rolled back")

        # The Event is posted after the status write the condition comes from: wait for it too.
        def warned() -> list[dict[str, Any]]:
            found = events(cluster, ns, "RolloutRolledBack")
            assert found, "no RolloutRolledBack Event yet"
            return found

        warnings = assert_eventually(warned, timeout=30, message="the RolloutRolledBack Event")
        assert warnings[0]["type"] == "Warning"
        assert "error-rate" in warnings[0]["message"]
        assert_eventually(
            lambda: (
                [d["metadata"]["labels"]["aiplane.io/version"] for d in children(cluster, ns)["deployments"]]
                == ["2.0.0"]
            ),
            timeout=60,
            message="the failed canary's Deployment removed",
        )

    # The leading operator counted the rollback, and routes everything to the stable version.
    assert_eventually(lambda: _rollback_counted(prometheus, ns), timeout=60, message="the rollback in Prometheus")
    # What the analysis read is what Prometheus holds: the failed canary's errors, by version.
    failed = prometheus.query(
        f'sum(aiplane_gateway_model_call_duration_seconds_count{{model="{MODEL}",version="3.0.0",outcome="error"}})'
    )
    assert failed
    assert float(failed[0]["value"][1]) > 0
    # And the predicted classes of both versions of the first rollout, for the drift check.
    classes = prometheus.query(
        f'sum by (version, class) (aiplane_gateway_model_predictions_total{{model="{MODEL}",namespace="{ns}"}})'
    )
    assert {c["metric"]["version"] for c in classes} >= {"1.0.0", "2.0.0"}, classes
    assert all(c["metric"]["class"] for c in classes)


def rolled_back_for(cluster: Cluster, namespace: str, metric: str, threshold: float) -> float:
    """Until the canary is rolled back for ``metric`` above ``threshold`` with all traffic on 1.0.0; the value the
    analysis read, as the RolledBack condition and the Warning Event state it."""

    def check() -> float:
        model = model_named(cluster, namespace, MODEL)
        rolled = condition(model, "RolledBack")
        assert (rolled["status"], rolled["reason"]) == ("True", "AnalysisFailed"), rolled
        found = re.search(rf"{metric} ([0-9.e+]+) above the threshold {threshold:g}\b", rolled["message"])
        assert found, rolled
        assert [(e["version"], e["weight"]) for e in model["status"]["endpoints"]] == [("1.0.0", 100)]
        warned = [e["message"] for e in events(cluster, namespace, "RolloutRolledBack")]
        assert any(found.group(0) in m for m in warned), warned
        return float(found.group(1))

    value: float = assert_eventually(check, timeout=120, message=f"the canary rolled back for {metric}")
    return value


@pytest.fixture
def audit_store(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    """The engine's store (URL, and an Engine on it) whose audit log an operator writes rollout decisions to."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    engine = Engine(url)
    try:
        yield url, engine
    finally:
        engine.close()


def test_a_slow_canary_and_a_drifting_one_roll_back_on_what_prometheus_measured(
    crds_installed: Cluster,
    k8s_namespace: str,
    claims_servers: dict[str, ModelServer],
    gateway: Gateway,
    start_analysing_operator: Callable[..., Operator],
    *,
    audit_store: tuple[str, Engine],
) -> None:
    """4.0.0 answers in 300 ms, above a 200 ms p99 threshold; 5.0.0 answers travel for every other claim that the
    stable version reads as auto (the traffic sends one auto claim), far from the stable version's mix."""
    cluster, ns = crds_installed, k8s_namespace
    store_url, store = audit_store
    wait_leading(start_analysing_operator(AIPLANE_DATABASE_URL=store_url))
    with traffic(gateway.url, gateway.api_key, MODEL):
        apply(cluster, ns, canary_manifest(claims_servers, "1.0.0", "4.0.0", maxP99LatencyMs=200))
        # The canary answers after 300 ms, so its p99 is above the gateway's 250 ms bucket bound; no upper bound:
        # a loaded machine adds its own wait (976 ms was seen in CI), and wall times are never asserted.
        assert rolled_back_for(cluster, ns, "p99-latency-ms", 200) > 250

        apply(cluster, ns, canary_manifest(claims_servers, "1.0.0", "5.0.0", maxDrift=0.5))
        # Half travel against all auto: PSI = (0.5 - 1) ln 0.5 + (0.5 - 1e-4) ln(0.5 / 1e-4), about 4.6, where
        # 1e-4 is the analysis' smoothing of a class the stable version never predicted.
        assert rolled_back_for(cluster, ns, "drift-psi", 0.5) > 1
    assert_eventually(
        lambda: (
            [d["metadata"]["labels"]["aiplane.io/version"] for d in children(cluster, ns)["deployments"]] == ["1.0.0"]
        ),
        timeout=60,
        message="the failed canaries' Deployments removed",
    )
    # Each rollback is in the audit log, with the failing metric, and the log's hash chain holds.
    rollbacks = [r for r in store.audit.records() if (r.kind, r.decision) == ("model", "rollback")]
    assert [r.subject for r in rollbacks] == [f"{ns}/{MODEL}"] * 2
    details = [json.loads(r.details) for r in rollbacks]
    assert [d["reason"] for d in details] == ["RolloutRolledBack"] * 2
    assert "p99-latency-ms" in details[0]["message"]
    assert "drift-psi" in details[1]["message"]
    assert store.audit.verify().ok
