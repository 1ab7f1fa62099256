"""The operator's /metrics on the test cluster, scraped by the real Prometheus: a canary's traffic weights per
version while it rolls out, the version's series gone once it is aborted, and the Model's rollback counter at 0."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiplane.modelserver import free_port
from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually
from tests.fixtures.prometheus import Prometheus
from tests.operators.conftest import Operator, wait_leading
from tests.operators.kube import apply, claims, model_named


@pytest.fixture
def scraped_operator(crds_installed: Cluster, prometheus: Prometheus, tmp_path: Path) -> Iterator[Operator]:
    port = free_port()
    args = ("--metrics-host", "127.0.0.1", f"--metrics-port={port}")
    op = Operator(crds_installed, tmp_path / "operator.log", args=args).start()
    target = prometheus.scrape(f"127.0.0.1:{port}", job="aiplane-operator")
    try:
        wait_leading(op)
        yield op
    finally:
        target.unlink()
        op.stop()


def test_canary_weights_and_rollbacks_reach_prometheus(
    crds_installed: Cluster, k8s_namespace: str, scraped_operator: Operator, prometheus: Prometheus
) -> None:
    cluster, ns = crds_installed, k8s_namespace
    canary = {"version": "2.0.0", "steps": [50, 100], "interval": "1h"}
    apply(cluster, ns, claims(canary=canary, resources={"cpu": "1", "memory": "1Gi"}))

    def weights() -> dict[str, float]:
        query = f'aiplane_operator_model_traffic_weight_percent{{namespace="{ns}",model="claims-extractor"}}'
        return {r["metric"]["version"]: float(r["value"][1]) for r in prometheus.query(query)}

    def split() -> None:
        endpoints = model_named(cluster, ns, "claims-extractor")["status"].get("endpoints") or []
        assert {e["version"]: e["weight"] for e in endpoints} == {"1.0.0": 50, "2.0.0": 50}
        assert weights() == {"1.0.0": 50.0, "2.0.0": 50.0}

    assert_eventually(split, timeout=120, interval=1.0, message="50/50 in the status and in Prometheus")
    rollbacks = prometheus.query(f'aiplane_operator_model_rollbacks_total{{namespace="{ns}"}}')
    assert [(r["metric"]["model"], r["value"][1]) for r in rollbacks] == [("claims-extractor", "0")]

    # Aborted: the canary's version is no longer live, and its series goes (not stuck at its last weight).
    cluster.kubectl("annotate", "-n", ns, "model", "claims-extractor", "aiplane.io/rollout-abort=true")

    def stable_only() -> Any:
        assert weights() == {"1.0.0": 100.0}

    assert_eventually(stable_only, timeout=120, interval=1.0, message="only the stable version in Prometheus")
