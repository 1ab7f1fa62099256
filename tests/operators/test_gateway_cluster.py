"""``aiplane gateway --models-from-cluster NAMESPACE``, as the chart runs it, on the test cluster: predict calls go
where the namespace's Models' ``status.endpoints`` send them, and follow the weights as they move.

The weights are written here as the Model operator writes them (the status subresource), so the test is about
the gateway alone; the operator's side of the same path is the canary test's.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiplane.modelserver import free_port
from aiplane.processes import stop_process_group
from api import create_api_key
from engine import Engine
from tests.fixtures.cluster import Cluster
from tests.fixtures.downstream import Downstream
from tests.fixtures.polling import assert_eventually
from tests.operators.conftest import AIPLANE
from tests.operators.kube import apply, claims

MODEL = "claims-extractor"


def set_endpoints(cluster: Cluster, namespace: str, endpoints: list[dict[str, Any]]) -> None:
    patch = json.dumps({"status": {"endpoints": endpoints}})
    cluster.kubectl("patch", "aim", MODEL, "-n", namespace, "--subresource=status", "--type=merge", "-p", patch)


@pytest.fixture
def gateway(crds_installed: Cluster, k8s_namespace: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``aiplane gateway`` for ``k8s_namespace``'s Models on its own SQLite store; (URL, API key)."""
    db = f"sqlite:///{tmp_path / 'gateway.db'}"
    engine = Engine(db, data_dir=tmp_path / "data")
    key = create_api_key(engine, "acme", "alice", ["submitter"])
    engine.close()
    port = free_port()
    env = {**crds_installed.env, "AIPLANE_DATA_DIR": str(tmp_path / "data"), "AIPLANE_LOG_FORMAT": "json"}
    command = [str(AIPLANE), "gateway", "--db", db, "--host", "127.0.0.1", "--port", str(port)]
    log = (tmp_path / "gateway.log").open("ab")
    process = subprocess.Popen(
        [*command, "--models-from-cluster", k8s_namespace],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> None:
        assert process.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
        try:
            status = httpx.get(f"{url}/readyz", timeout=2).status_code
        except httpx.HTTPError as error:
            raise AssertionError(f"not listening yet: {error}") from error
        assert status == 200

    try:
        assert_eventually(up, timeout=60, message="aiplane gateway ready")
        yield url, key
    finally:
        stop_process_group(process, 30)
        log.close()


def test_the_gateway_routes_by_the_weights_in_model_status(
    crds_installed: Cluster, k8s_namespace: str, gateway: tuple[str, str]
) -> None:
    cluster, ns = crds_installed, k8s_namespace
    url, key = gateway
    stable, canary = Downstream(), Downstream()
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:

            def predict() -> int:
                return client.post(f"/v1/models/{MODEL}/predict", json={"document": "x"}).status_code

            # No such Model yet: the gateway says so.
            assert predict() == 404
            apply(cluster, ns, claims())
            set_endpoints(cluster, ns, [{"version": "1.0.0", "url": stable.url("/v1"), "weight": 100}])
            assert_eventually(lambda: predict() == 200, timeout=30, message="routed to the stable version")
            before = stable.count("/v1/predict")
            assert [predict() for _ in range(10)] == [200] * 10
            assert stable.count("/v1/predict") == before + 10

            # The operator moves all traffic to the canary: so does the gateway, without a restart.
            set_endpoints(
                cluster,
                ns,
                [
                    {"version": "1.0.0", "url": stable.url("/v1"), "weight": 0},
                    {"version": "2.0.0", "url": canary.url("/v2"), "weight": 100},
                ],
            )

            def on_canary() -> None:
                was = stable.count("/v1/predict")
                assert [predict() for _ in range(5)] == [200] * 5
                assert stable.count("/v1/predict") == was

            assert_eventually(on_canary, timeout=30, message="traffic follows the weights to the canary")
            assert canary.count("/v2/predict") >= 5

            # The Model goes away: so does its route.
            cluster.kubectl("delete", "aim", MODEL, "-n", ns, "--wait=true")
            assert_eventually(lambda: predict() == 404, timeout=30, message="the deleted Model is not routed")
    finally:
        stable.close()
        canary.close()
