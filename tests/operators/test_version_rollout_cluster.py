"""A new ``spec.version`` under ``spec.rollout``, end to end: the operator on the test cluster, the gateway routing
real requests by ``status.endpoints`` to real ``bentoml serve`` processes (one failing on purpose), Prometheus
scraping the gateway, and the operator's analysis reading Prometheus. A good version goes through the steps and
becomes stable, across an operator killed mid-rollout; a failing one is rolled back and stays rolled back, the old
version serving everything. What
``kubectl get aim`` prints is read from the apiserver's Table, the CRD's printer columns."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import kubernetes

from aiplane.modelserver import ModelServer
from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually
from tests.operators.conftest import Gateway, Operator, wait_leading
from tests.operators.kube import apply, children, claims, condition, events, model_named
from tests.operators.serving import CLAIMS_ANALYSIS, traffic

MODEL = "claims-extractor"
STRATEGY = {"steps": [50, 100], "interval": "8s", "analysis": CLAIMS_ANALYSIS}


def manifest(servers: dict[str, ModelServer], version: str, bento: str) -> dict[str, Any]:
    """The claims Model at ``version`` with ``spec.rollout``; every version served by its local ``bentoml serve``."""
    found = claims(version=version, bento=bento, rollout=STRATEGY)
    urls = {v: server.url for v, server in servers.items()}
    found["metadata"]["annotations"]["aiplane.io/endpoint-urls"] = json.dumps(urls)
    return found


def printed(cluster: Cluster, namespace: str) -> dict[str, Any]:
    """The Model's row as ``kubectl get aim`` prints it: column name -> cell, from the apiserver's Table."""
    client = cluster.api_client()
    try:
        response: Any = kubernetes.client.CustomObjectsApi(client).get_namespaced_custom_object(
            "aiplane.io",
            "v1alpha1",
            namespace,
            "models",
            MODEL,
            _headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
            _preload_content=False,
        )
        table = json.loads(response.data)
    finally:
        close: Callable[[], None] = client.close  # untyped upstream
        close()
    names = [c["name"] for c in table["columnDefinitions"]]
    (row,) = table["rows"]
    return dict(zip(names, row["cells"], strict=True))


def weights(model: dict[str, Any]) -> dict[str, int]:
    return {e["version"]: e["weight"] for e in model["status"].get("endpoints") or []}


def deployments(cluster: Cluster, namespace: str) -> dict[str, str]:
    """Version -> the bento its Deployment serves."""
    return {
        d["metadata"]["labels"]["aiplane.io/version"]: d["spec"]["template"]["spec"]["containers"][0]["command"][2]
        for d in children(cluster, namespace)["deployments"]
    }


def started(cluster: Cluster, namespace: str, version: str) -> int:
    return sum(1 for e in events(cluster, namespace, "RolloutStarted") if e["message"] == f"rolling out {version}")


def columns(cluster: Cluster, namespace: str) -> tuple[Any, ...]:
    row = printed(cluster, namespace)
    return row["Version"], row["Stable"], row["Canary"], row["Weight"]


def serves_first_version(cluster: Cluster, ns: str) -> None:
    def serving() -> None:
        model = model_named(cluster, ns, MODEL)
        assert model["status"].get("stableVersion") == "1.0.0", model["status"]
        assert weights(model) == {"1.0.0": 100}
        assert condition(model, "Ready")["status"] == "True"

    assert_eventually(serving, timeout=120, message="1.0.0 serving")
    assert columns(cluster, ns) == ("1.0.0", "1.0.0", None, None)


def steps_and_promotes(cluster: Cluster, ns: str, operator: Operator, start: Callable[..., Operator]) -> None:
    def split() -> None:
        model = model_named(cluster, ns, MODEL)
        assert weights(model) == {"1.0.0": 50, "2.0.0": 50}, model["status"]
        assert model["status"]["stableVersion"] == "1.0.0"
        # The new version names another bento: the serving version keeps running its own meanwhile.
        assert deployments(cluster, ns) == {"1.0.0": "service:ClaimsExtractor", "2.0.0": "service:ClaimsExtractorV2"}
        assert columns(cluster, ns) == ("2.0.0", "1.0.0", "2.0.0", 50)

    assert_eventually(split, timeout=120, message="2.0.0 at its first step, 50%")

    # Killed mid-rollout: the restarted operator finds the serving version's bento in its Deployment, not in the
    # spec, and goes on with the same rollout rather than switching to 2.0.0 or starting over.
    operator.kill9()
    wait_leading(start("restarted"))
    assert deployments(cluster, ns).get("1.0.0", "service:ClaimsExtractor") == "service:ClaimsExtractor"

    def promoted() -> None:
        model = model_named(cluster, ns, MODEL)
        assert (model["status"].get("rollout") or {}).get("phase") == "Promoted", model["status"]
        assert model["status"]["stableVersion"] == "2.0.0" == model["spec"]["version"]
        assert [(e["version"], e["weight"]) for e in model["status"]["endpoints"]] == [("2.0.0", 100)]
        assert deployments(cluster, ns) == {"2.0.0": "service:ClaimsExtractorV2"}
        assert condition(model, "Degraded")["status"] == "False"

    assert_eventually(promoted, timeout=180, message="2.0.0 promoted to stable")
    assert columns(cluster, ns) == ("2.0.0", "2.0.0", None, None)
    assert [e["message"] for e in events(cluster, ns, "RolloutPromoted")]
    assert started(cluster, ns, "2.0.0") == 1


def rolls_back(cluster: Cluster, ns: str) -> None:
    def rolled_back() -> None:
        model = model_named(cluster, ns, MODEL)
        rolled = condition(model, "RolledBack")
        assert (rolled["status"], rolled["reason"]) == ("True", "AnalysisFailed"), rolled
        assert "rolled back 3.0.0 at 50%: error-rate" in rolled["message"]
        assert "Set spec.version back to 2.0.0, or to a fixed version" in rolled["message"]
        degraded = condition(model, "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", "RolledBack"), degraded
        assert degraded["message"].startswith("spec.version 3.0.0 does not serve")
        assert [(e["version"], e["weight"]) for e in model["status"]["endpoints"]] == [("2.0.0", 100)]
        assert model["status"]["stableVersion"] == "2.0.0"
        assert deployments(cluster, ns) == {"2.0.0": "service:ClaimsExtractorV2"}

    assert_eventually(rolled_back, timeout=180, message="3.0.0 rolled back")


def stays_rolled_back(cluster: Cluster, ns: str) -> None:
    """A later reconcile (a spec change the operator must act on) starts nothing again."""
    generation = int(model_named(cluster, ns, MODEL)["metadata"]["generation"])
    cluster.kubectl("patch", "-n", ns, "model", MODEL, "--type=merge", "-p", '{"spec":{"scaleTarget":9}}')

    def reconciled_again() -> None:
        model = model_named(cluster, ns, MODEL)
        assert model["status"]["observedGeneration"] > generation, model["status"]
        assert model["status"]["rollout"]["phase"] == "RolledBack"
        assert model["status"].get("canaryVersion") is None
        assert weights(model) == {"2.0.0": 100}
        hpa = children(cluster, ns)["horizontalpodautoscalers"]
        assert [h["spec"]["metrics"][0]["pods"]["target"]["averageValue"] for h in hpa] == ["9"]

    assert_eventually(reconciled_again, timeout=60, message="the scaleTarget change reconciled")
    assert deployments(cluster, ns) == {"2.0.0": "service:ClaimsExtractorV2"}
    assert started(cluster, ns, "3.0.0") == 1
    assert columns(cluster, ns) == ("3.0.0", "2.0.0", None, None)


def test_a_version_change_rolls_out_through_the_steps_and_a_failing_one_stays_rolled_back(
    crds_installed: Cluster,
    k8s_namespace: str,
    claims_servers: dict[str, ModelServer],
    gateway: Gateway,
    start_analysing_operator: Callable[..., Operator],
) -> None:
    cluster, ns = crds_installed, k8s_namespace
    operator = start_analysing_operator()
    wait_leading(operator)
    apply(cluster, ns, manifest(claims_servers, "1.0.0", "service:ClaimsExtractor"))
    serves_first_version(cluster, ns)

    with traffic(gateway.url, gateway.api_key, MODEL) as counts:
        apply(cluster, ns, manifest(claims_servers, "2.0.0", "service:ClaimsExtractorV2"))
        steps_and_promotes(cluster, ns, operator, start_analysing_operator)
        assert counts.get("200", 0) > 0
        # The next version fails every request: the analysis rolls it back, and 2.0.0 keeps serving.
        apply(cluster, ns, manifest(claims_servers, "3.0.0", "service:ClaimsExtractorV3"))
        rolls_back(cluster, ns)

    stays_rolled_back(cluster, ns)
    # Both versions' predicted classes were counted during the first rollout, for its drift check: the gateway
    # follows spec.rollout's predictionField while a version rolls out.
    classes = gateway.prometheus.query(
        f'sum by (version, class) (aiplane_gateway_model_predictions_total{{model="{MODEL}",namespace="{ns}"}})'
    )
    assert {c["metric"]["version"] for c in classes} >= {"1.0.0", "2.0.0"}, classes
