"""Kafka consumer pods of a Helm install, on the real test cluster and a real broker: a kafkaSource Connector in the
release's namespace gets a consumer Deployment that runs governed (the chart's ServiceAccount, the PII key from its
Secret, ``--from-cluster``) and whose pods a namespace enforcing Pod Security `restricted` admits; one in another
namespace is Degraded naming the Secrets and ServiceAccount to make there, and runs once they are.

Pods only run on kwok nodes, so the operator runs here as a process, with the settings of the chart's operator
Deployment and under its ServiceAccount's token (the chart's ClusterRole is what it may do); the test asserts on
the objects. What governed consumers do is tested in tests/connectors and tests/policies/test_kafka_governance.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tests.fixtures.cluster import Cluster
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually
from tests.helm.chart import CHART, TRY_OUT, helm
from tests.helm.test_chart_cluster import INSTALL_TIMEOUT_S, _release
from tests.operators.conftest import Operator, wait_leading

CONNECTOR = "intake"
SOURCE_PODS = f"aiplane.io/connector={CONNECTOR}"


def _json(cluster: Cluster, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cluster.kubectl(*args, "-o", "json").stdout)
    return found


def _as_service_account(cluster: Cluster, namespace: str, account: str, path: Path) -> Cluster:
    """The cluster as ``account`` sees it: a kubeconfig with its token instead of the admin's credentials."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    shutil.copy(cluster.kubeconfig, path)
    scoped = Cluster(kubeconfig=path, env={**os.environ, "KUBECONFIG": str(path)})
    context = scoped.kubectl("config", "current-context").stdout.strip()
    scoped.kubectl("config", "set-credentials", account, f"--token={token}")
    scoped.kubectl("config", "set-context", context, f"--user={account}")
    return scoped


def _can(cluster: Cluster, account: str, namespace: str, verb: str, resource: str) -> bool:
    out = cluster.kubectl("auth", "can-i", verb, resource, "-n", namespace, f"--as={account}", check=False)
    return out.stdout.strip() == "yes"


def _chart_operator(cluster: Cluster, namespace: str, release: str, path: Path) -> Operator:
    """``aiplane operator`` with the chart's operator Deployment's settings, under its ServiceAccount."""
    deployment = _json(cluster, "get", "deployment", f"{release}-aiplane-operator", "-n", namespace)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    settings = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    as_operator = _as_service_account(cluster, namespace, f"{release}-aiplane-operator", path / "kubeconfig")
    # Rechecks every 2 s, so the topic is found promptly.
    env = {**settings, "AIPLANE_CONNECTOR_RECHECK_S": "2"}
    operator = Operator(as_operator, path / "operator.log", extra_env=env).start()
    wait_leading(operator)
    return operator


def _kafka_source(namespace: str, bootstrap: str, topic: str) -> dict[str, Any]:
    block = {"bootstrapServers": bootstrap, "topic": topic, "workflow": "claims"}
    return {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Connector",
        "metadata": {"name": CONNECTOR, "namespace": namespace},
        "spec": {"type": "kafkaSource", "kafkaSource": block},
    }


def _running_consumer(cluster: Cluster, namespace: str, operator: Operator) -> dict[str, Any]:
    def running() -> dict[str, Any]:
        assert operator.alive, operator.log_path.read_text()[-3000:]
        pods: list[dict[str, Any]] = _json(cluster, "get", "pods", "-n", namespace, "-l", SOURCE_PODS)["items"]
        if not pods:  # a refused pod shows as its ReplicaSet's FailedCreate condition
            sets = _json(cluster, "get", "replicasets", "-n", namespace, "-l", SOURCE_PODS)["items"]
            raise AssertionError([s.get("status", {}).get("conditions") for s in sets] or "no ReplicaSet yet")
        (pod,) = pods
        assert pod["status"].get("phase") == "Running", pod["status"]
        assert pod["spec"]["nodeName"].startswith("kwok-")
        return pod

    pod: dict[str, Any] = assert_eventually(running, timeout=INSTALL_TIMEOUT_S, interval=1.0)
    return pod


def _assert_reads_its_namespace_only(cluster: Cluster, namespace: str, account: str) -> None:
    """What the consumer's watches list, in its namespace only, and no Secret."""
    subject = f"system:serviceaccount:{namespace}:{account}"
    for kind in ("policies", "workflows", "models", "connectors"):
        for verb in ("get", "list", "watch"):
            assert _can(cluster, subject, namespace, verb, f"{kind}.aiplane.io"), (verb, kind)
        assert not _can(cluster, subject, "default", "list", f"{kind}.aiplane.io"), kind
        assert not _can(cluster, subject, namespace, "create", f"{kind}.aiplane.io"), kind
    assert not _can(cluster, subject, namespace, "get", "secrets")


def _degraded(cluster: Cluster, namespace: str, reason: str) -> str:
    """The Degraded message once the Connector is degraded for ``reason``."""

    def check() -> str:
        found = _json(cluster, "get", "connector", CONNECTOR, "-n", namespace)
        (degraded,) = [c for c in found.get("status", {}).get("conditions", []) if c["type"] == "Degraded"]
        assert (degraded["status"], degraded["reason"]) == ("True", reason), degraded
        message: str = degraded["message"]
        return message

    message: str = assert_eventually(check, timeout=60, message=f"Degraded with {reason}")
    return message


def _copy(cluster: Cluster, kind: str, name: str, source: str, target: str, **changes: Any) -> None:
    """``kind``/``name`` of namespace ``source`` made again in ``target``, as docs/operations.md says to."""
    found = _json(cluster, "get", kind, name, "-n", source)
    found["metadata"] = {"name": name, "namespace": target}
    cluster.kubectl("apply", "-f", "-", input=json.dumps({**found, **changes}))


def _set_up_like_the_release(cluster: Cluster, release: str, namespace: str, elsewhere: str) -> None:
    """What a Connector outside the release's namespace needs there: the store's and the PII key's Secrets, the
    consumers' ServiceAccount and the chart's Role for it, bound to it."""
    account = f"{release}-aiplane-kafka-source"
    for secret in (f"{release}-aiplane-postgresql", f"{release}-aiplane-pii"):
        _copy(cluster, "secret", secret, namespace, elsewhere)
    cluster.kubectl("create", "serviceaccount", account, "-n", elsewhere)
    _copy(cluster, "role", account, namespace, elsewhere)
    subjects = [{"kind": "ServiceAccount", "name": account, "namespace": elsewhere}]
    _copy(cluster, "rolebinding", account, namespace, elsewhere, subjects=subjects)


def _a_source_elsewhere_needs_its_namespace_set_up(
    cluster: Cluster, kafka: Kafka, release: str, namespace: str, operator: Operator
) -> None:
    elsewhere = cluster.create_namespace("helm-elsewhere")
    try:
        topic = kafka.new_topic(partitions=1, prefix="helm-elsewhere")
        cluster.kubectl("apply", "-f", "-", input=json.dumps(_kafka_source(elsewhere, kafka.bootstrap_servers, topic)))
        # Under the chart's operator token: what is missing, named, rather than pods that cannot be made.
        message = _degraded(cluster, elsewhere, "SecretMissing")
        assert f"Secret '{release}-aiplane-postgresql' (for the engine store's URL" in message
        assert f"Secret '{release}-aiplane-pii' (for the PII key of governed consumers" in message
        assert f"ServiceAccount '{release}-aiplane-kafka-source' does not exist in namespace {elsewhere}" in message
        assert _json(cluster, "get", "deployments", "-n", elsewhere, "-l", SOURCE_PODS)["items"] == []

        _set_up_like_the_release(cluster, release, namespace, elsewhere)
        spec = _running_consumer(cluster, elsewhere, operator)["spec"]
        assert spec["serviceAccountName"] == f"{release}-aiplane-kafka-source"
        _assert_reads_its_namespace_only(cluster, elsewhere, f"{release}-aiplane-kafka-source")
    finally:
        cluster.delete_namespace(elsewhere)


def test_a_kafka_source_of_the_release_namespace_runs_governed_and_restricted(
    cluster: Cluster, kafka: Kafka, restricted_namespace: str, tmp_path: Path
) -> None:
    namespace, release = restricted_namespace, _release()
    values = (*TRY_OUT, "--set", f"kafka.bootstrapServers={kafka.bootstrap_servers}")
    operator: Operator | None = None
    try:
        helm("install", release, str(CHART), "-n", namespace, *values, "--wait", "--timeout", "4m", env=cluster.env)
        operator = _chart_operator(cluster, namespace, release, tmp_path)
        topic = kafka.new_topic(partitions=1, prefix="helm-source")
        cluster.kubectl("apply", "-f", "-", input=json.dumps(_kafka_source(namespace, kafka.bootstrap_servers, topic)))

        # Admitted under `restricted`: the namespace enforces it, so a violating pod would not exist.
        spec = _running_consumer(cluster, namespace, operator)["spec"]
        # Governed: the chart's read-only ServiceAccount, the Policies of the Connector's namespace, the PII key
        # the gateway and workers use, and the store's URL from the bundled PostgreSQL's Secret.
        account = f"{release}-aiplane-kafka-source"
        assert (spec["serviceAccountName"], spec["automountServiceAccountToken"]) == (account, True)
        (source,) = spec["containers"]
        assert source["command"] == ["aiplane", "kafka-source"]
        assert source["args"][-2:] == ["--from-cluster", namespace]
        env = {item["name"]: item.get("valueFrom", {}).get("secretKeyRef") for item in source["env"]}
        assert env["AIPLANE_PII_KEY"] == {"name": f"{release}-aiplane-pii", "key": "key"}
        assert env["AIPLANE_DATABASE_URL"] == {"name": f"{release}-aiplane-postgresql", "key": "url"}
        _assert_reads_its_namespace_only(cluster, namespace, account)

        cluster.kubectl("delete", "connector", CONNECTOR, "-n", namespace, "--wait=true")

        def consumers_gone() -> None:
            assert _json(cluster, "get", "deployments", "-n", namespace, "-l", SOURCE_PODS)["items"] == []

        assert_eventually(consumers_gone, timeout=90, message="the consumers are deleted with the Connector")

        _a_source_elsewhere_needs_its_namespace_set_up(cluster, kafka, release, namespace, operator)
    finally:
        if operator is not None:
            operator.stop()
        helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "4m", env=cluster.env, check=False)
