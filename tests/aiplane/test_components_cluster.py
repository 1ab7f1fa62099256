"""``aiplane gateway`` and ``aiplane worker --from-cluster NAMESPACE`` as the chart runs them: separate processes on
a PostgreSQL store, beside ``aiplane operator``, on the test cluster. The claims example's Workflow, Model,
kafkaSink Connector and Policy are applied after they start; a task submitted through the gateway runs the
Workflow the operator validated, calls the model where the Model's status sends it, publishes to the Connector's
(real) Kafka topic, and is governed by the Policy (input masked; residency followed as the Policy changes).

Pods on kwok's nodes run nothing, so the Model maps its version to a local HTTP server with the
``aiplane.io/endpoint-urls`` annotation (as the operator tests do), and the Connector points at the test broker.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from aiplane.modelserver import free_port
from aiplane.processes import stop_process_group
from api import create_api_key
from engine import Engine
from tests.connectors.kafkaio import read_all
from tests.fixtures.cluster import Cluster
from tests.fixtures.downstream import Downstream, Reply
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually
from tests.operators.conftest import AIPLANE, Operator, crds_installed, wait_leading

__all__ = ["crds_installed"]  # the CRDs fixture of the operator tests

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "claims-triage"
EMAIL = "jane.doe@example.com"
EXTRACTED = {"amount": 1200.0, "confidence": 0.95, "claim_type": "auto", "currency": "EUR"}


def example(name: str, kind: str, metadata_name: str) -> dict[str, Any]:
    for document in yaml.safe_load_all((EXAMPLE / name).read_text()):
        if document["kind"] == kind and document["metadata"]["name"] == metadata_name:
            found: dict[str, Any] = document
            return found
    raise LookupError(f"{kind}/{metadata_name} not in {name}")


def apply(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))


@dataclass
class Deployed:
    url: str
    api_key: str
    log: Path


@pytest.fixture
def deployed(crds_installed: Cluster, k8s_namespace: str, pg_url: str, tmp_path: Path) -> Iterator[Deployed]:
    """The operator, a gateway and a worker, all following ``k8s_namespace``."""
    data = tmp_path / "data"  # the blob directory the chart's gateway and workers would share
    engine = Engine(pg_url, data_dir=data)
    key = create_api_key(engine, "acme", "alice", ["submitter"])
    engine.close()
    port = free_port()
    env = {
        **crds_installed.env,
        "AIPLANE_DATABASE_URL": pg_url,
        "AIPLANE_DATA_DIR": str(data),
        "AIPLANE_LOG_FORMAT": "json",
        "AIPLANE_PII_KEY": base64.b64encode(os.urandom(32)).decode(),
    }
    # The Model's version is served by a local HTTP server named in its aiplane.io/endpoint-urls annotation.
    operator = Operator(
        crds_installed, tmp_path / "operator.log", extra_env={"AIPLANE_ENDPOINT_URLS_ANNOTATION": "true"}
    ).start()
    log_path = tmp_path / "components.log"
    log = log_path.open("ab")
    cluster = ["--from-cluster", k8s_namespace]
    processes = [
        subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
        for command in (
            [str(AIPLANE), "gateway", "--host", "127.0.0.1", "--port", str(port), *cluster],
            [str(AIPLANE), "worker", "--concurrency", "2", *cluster],
        )
    ]
    url = f"http://127.0.0.1:{port}"

    def up() -> None:
        for process in processes:
            assert process.poll() is None, log_path.read_text()[-4000:]
        try:
            assert httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError as error:
            raise AssertionError(f"gateway not listening yet: {error}") from error

    try:
        assert_eventually(up, timeout=120, message="gateway and worker up")
        wait_leading(operator)
        yield Deployed(url, key, log_path)
    finally:
        for process in processes:
            stop_process_group(process, 30)
        log.close()
        operator.stop()


def test_a_task_runs_what_the_namespace_declares(
    crds_installed: Cluster, k8s_namespace: str, kafka: Kafka, deployed: Deployed
) -> None:
    cluster, ns = crds_installed, k8s_namespace
    topic = kafka.new_topic(partitions=1, prefix="claims-out")
    model_server = Downstream()
    model_server.script("/extract", Reply(body=EXTRACTED))
    try:
        model = example("model.yaml", "Model", "claims-extractor")
        model["metadata"]["annotations"]["aiplane.io/endpoint-urls"] = json.dumps({"1.0.0": model_server.base_url})
        # The simulated nodes' two GPUs are shared with every other test on this cluster: ask for none.
        del model["spec"]["resources"]["gpu"], model["spec"]["tolerations"]
        sink = example("connectors.yaml", "Connector", "claims-decisions")
        sink["spec"]["kafkaSink"].update(bootstrapServers=kafka.bootstrap_servers, topic=topic)
        policy = example("policy.yaml", "Policy", "claims-governance")
        for manifest in (policy, sink, model, example("workflow.yaml", "Workflow", "claims-triage")):
            apply(cluster, ns, manifest)

        with httpx.Client(
            base_url=deployed.url, headers={"Authorization": f"Bearer {deployed.api_key}"}, timeout=30
        ) as client:
            document = f"Rear-ended on 2026-11-02, repair EUR 1,200. Contact {EMAIL}."
            submission = {"workflow": {"name": "claims-triage"}, "input": {"claimId": "C-1", "document": document}}
            task: dict[str, Any] = {}

            def submitted() -> None:
                # 404 until the Workflow operator has found the Workflow valid and a watch has registered it.
                response = client.post("/v1/tasks", json=submission)
                assert response.status_code == 202, response.text
                task.update(response.json())

            assert_eventually(submitted, timeout=120, message="the Workflow is registered from the cluster")

            def finished() -> dict[str, Any]:
                found: dict[str, Any] = client.get(f"/v1/tasks/{task['id']}").json()
                assert found["state"] == "succeeded", (found, deployed.log.read_text()[-4000:])
                return found

            done = assert_eventually(finished, timeout=120, message="the task ran on the worker")
            # The model was called where the Model's status sends it, with the document as the Policy masked it.
            (call,) = model_server.calls["/extract"]
            assert EMAIL not in json.dumps(call.body)
            assert EMAIL not in json.dumps(done)
            # The decision reached the kafkaSink Connector's topic.
            (record,) = read_all(kafka.bootstrap_servers, topic, 1)
            assert json.loads(record.value) == {"claimId": "C-1", "claimType": "auto", "amount": 1200.0}

            # The Policy now keeps claims in a region none of its systems is in: the gateway follows it.
            policy["spec"]["residency"]["regions"] = ["us-east"]
            apply(cluster, ns, policy)

            def refused() -> None:
                response = client.post("/v1/tasks", json=submission | {"input": {"claimId": "C-2", "document": "x"}})
                assert response.status_code == 403, response.text
                assert response.json()["type"].endswith("residency-denied")

            assert_eventually(refused, timeout=60, message="the residency change is enforced")
    finally:
        model_server.close()
