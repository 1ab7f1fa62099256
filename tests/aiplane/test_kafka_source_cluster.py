"""``aiplane kafka-source --from-cluster``, what a governed consumer pod runs, as a process against the real
apiserver, broker and store: the namespace's Policy masks the tasks' stored input, and a change to its tenants
reaches the running consumer, whose next message is dead-lettered as tenant-denied."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import yaml

from aiplane.processes import stop_process_group
from engine import Engine
from tests.connectors.kafkaio import headers, produce, read_all
from tests.fixtures.cluster import Cluster
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually
from tests.operators.conftest import AIPLANE, crds_installed
from tests.policies.test_pii_engine import CLAIM

__all__ = ["crds_installed"]

WORKFLOW = {"steps": [{"name": "decide", "type": "rules", "rules": {"set": {"big": "input.amount > 10000"}}}]}


def _apply(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))


def _policy(tenants: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Policy",
        "metadata": {"name": "claims-governance"},
        "spec": {
            "selector": {"matchLabels": {"team": "claims"}},
            "access": {"tenants": tenants},
            "pii": {"entities": ["EMAIL_ADDRESS", "PERSON"], "action": "tokenize", "unmaskRoles": ["auditor"]},
        },
    }


def test_a_governed_consumer_masks_and_follows_its_namespaces_policies(
    crds_installed: Cluster, k8s_namespace: str, kafka: Kafka, tmp_path: Path
) -> None:
    cluster, namespace = crds_installed, k8s_namespace
    _apply(
        cluster,
        namespace,
        {
            "apiVersion": "aiplane.io/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": "claims", "labels": {"team": "claims"}},
            "spec": WORKFLOW,
        },
    )
    _apply(cluster, namespace, _policy(["acme"]))
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    engine = Engine(db_url, data_dir=tmp_path, sqlite_synchronous="NORMAL")
    engine.register_workflow("claims", WORKFLOW)  # as the gateway and workers of the namespace do
    topic = kafka.new_topic(partitions=1, prefix="gov-pod-in")
    dlq = kafka.new_topic(partitions=1, prefix="gov-pod-dlq")
    spec = {"bootstrapServers": kafka.bootstrap_servers, "topic": topic, "workflow": "claims", "deadLetterTopic": dlq}
    env = {**cluster.env, "AIPLANE_PII_KEY": base64.b64encode(os.urandom(32)).decode()}
    log_path = tmp_path / "source.log"
    with log_path.open("ab") as log:
        command = [str(AIPLANE), "kafka-source", "--from-cluster", namespace, "--tenant", "acme"]
        command += ["--connector", f"intake-{uuid.uuid4().hex[:6]}", "--spec", json.dumps(spec)]
        command += ["--db-url", db_url, "--data-dir", str(tmp_path)]
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        produce(kafka.bootstrap_servers, topic, [CLAIM])

        def masked() -> dict[str, Any]:
            assert process.poll() is None, log_path.read_text()[-4000:]
            items = engine.list("acme", include_payloads=True).items
            assert len(items) == 1, "no task yet"
            stored: dict[str, Any] = items[0].input
            return stored

        stored = assert_eventually(masked, timeout=120, interval=0.2, message="the message became a task")
        assert stored["claimant"]["email"].startswith("<EMAIL_ADDRESS:t:")
        assert stored["claimant"]["name"].startswith("<PERSON:t:")
        assert CLAIM["claimant"]["email"] not in json.dumps(stored)

        # The Policy now names another tenant: the running consumer refuses acme's next message.
        _apply(cluster, namespace, _policy(["initech"]))

        def refused() -> None:
            produce(kafka.bootstrap_servers, topic, [{"claimId": "C-2", "amount": 1}])
            dead = read_all(kafka.bootstrap_servers, dlq, 1, timeout=5)
            assert headers(dead[0])["aiplane-dlq-reason"] == "tenant-denied"

        assert_eventually(refused, timeout=60, interval=0.5, message="the Policy change reached the consumer")
    finally:
        stop_process_group(process, 30)
        engine.close()
