"""The Connector operator on the real test cluster and a real Kafka broker: a kafkaSource's consumer Deployment
(replicas capped at the topic's partitions, pods Running on kwok nodes), and Ready/Degraded with the reason when a
Secret, the topic, the dead-letter topic or the broker is missing."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.kafka.clients import ensure_topics
from tests.fixtures.cluster import Cluster
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually
from tests.operators.conftest import Operator, wait_leading
from tests.operators.kube import apply, condition, get

SELECTOR = "app.kubernetes.io/managed-by=aiplane-operator,app.kubernetes.io/component=kafka-source"
UNREACHABLE = "127.0.0.1:1"


@pytest.fixture
def connector_operator(start_operator: Any) -> Operator:
    # Rechecks every 2 s, so a topic or Secret created after the Connector is noticed promptly.
    op: Operator = start_operator("connector-operator", AIPLANE_CONNECTOR_RECHECK_S="2")
    wait_leading(op)
    return op


def source(name: str, bootstrap: str, topic: str, **block: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Connector",
        "metadata": {"name": name},
        "spec": {
            "type": "kafkaSource",
            "kafkaSource": {"bootstrapServers": bootstrap, "topic": topic, "workflow": "claims-triage", **block},
        },
    }


def store_secret(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "create", "secret", "generic", "aiplane-store", "-n", namespace,
        "--from-literal=url=postgresql+psycopg://aiplane:s3cret@db:5432/aiplane",
    )  # fmt: skip


def dead_letters(kafka: Kafka) -> dict[str, str]:
    """A dead-letter topic that exists, so a source's Degraded is about what the test is about."""
    return {"deadLetterTopic": kafka.new_topic(partitions=1, prefix="aic-dlq")}


def connector_named(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    found = get(cluster, namespace, "connector", name)
    found.setdefault("status", {})
    return found


def degraded_by(cluster: Cluster, namespace: str, name: str, reason: str) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        found = connector_named(cluster, namespace, name)
        degraded = condition(found, "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", reason), degraded
        ready = condition(found, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", reason), ready
        assert found["status"]["observedGeneration"] == found["metadata"]["generation"]
        return found

    result: dict[str, Any] = assert_eventually(check, timeout=60, message=f"{name} Degraded with {reason}")
    return result


def ready(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        found = connector_named(cluster, namespace, name)
        assert condition(found, "Ready")["status"] == "True", found["status"]
        assert condition(found, "Degraded")["status"] == "False"
        return found

    result: dict[str, Any] = assert_eventually(check, timeout=90, message=f"{name} Ready")
    return result


def consumers(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get(cluster, namespace, "deployments", "-l", SELECTOR)["items"]
    return items


def test_a_source_gets_consumers_capped_at_partitions_running_on_kwok_and_deleting_it_removes_them(
    crds_installed: Cluster, kafka: Kafka, k8s_namespace: str, connector_operator: Operator
) -> None:
    cluster = crds_installed
    topic = kafka.new_topic(partitions=2, prefix="aic-source")
    store_secret(cluster, k8s_namespace)
    apply(cluster, k8s_namespace, source("intake", kafka.bootstrap_servers, topic, replicas=4, **dead_letters(kafka)))

    found = ready(cluster, k8s_namespace, "intake")
    assert found["status"]["replicas"] == 2
    assert found["status"]["readyReplicas"] == 2
    assert found["status"]["partitions"] == 2
    message = condition(found, "Ready")["message"]
    assert f"2/2 consumers ready (spec.kafkaSource.replicas is 4; topic '{topic}' has 2 partitions" in message

    (deployment,) = consumers(cluster, k8s_namespace)
    assert deployment["spec"]["replicas"] == 2
    (owner,) = deployment["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Connector",
        "intake",
        found["metadata"]["uid"],
        True,
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "connectors.kafka", "source"]
    assert "s3cret" not in str(deployment), "the store URL's password is in the Deployment"
    env = {e["name"]: e for e in container["env"]}
    assert env["AIPLANE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "aiplane-store", "key": "url"}

    pods = get(cluster, k8s_namespace, "pods", "-l", "aiplane.io/connector=intake")["items"]
    assert len(pods) == 2
    assert all(pod["status"]["phase"] == "Running" for pod in pods)
    assert all(pod["spec"]["nodeName"].startswith("kwok-") for pod in pods)

    printed = cluster.kubectl("get", "aic", "intake", "-n", k8s_namespace).stdout.splitlines()[1].split()
    assert printed[:5] == ["intake", "kafkaSource", "True", "AsExpected", "2"]

    cluster.kubectl("delete", "connector", "intake", "-n", k8s_namespace, "--wait=true")

    def gone() -> None:
        assert consumers(cluster, k8s_namespace) == []
        assert get(cluster, k8s_namespace, "pods", "-l", "aiplane.io/connector=intake")["items"] == []

    assert_eventually(gone, timeout=90, message="the consumers are deleted with the Connector")


def test_a_missing_secret_is_degraded_until_it_is_created(
    crds_installed: Cluster, kafka: Kafka, k8s_namespace: str, connector_operator: Operator
) -> None:
    cluster = crds_installed
    topic = kafka.new_topic(partitions=1, prefix="aic-secret")
    apply(cluster, k8s_namespace, source("intake", kafka.bootstrap_servers, topic, **dead_letters(kafka)))
    found = degraded_by(cluster, k8s_namespace, "intake", "SecretMissing")
    message = condition(found, "Degraded")["message"]
    assert "Secret 'aiplane-store' (for the engine store's URL" in message
    assert f"create it in namespace {k8s_namespace}" in message
    assert consumers(cluster, k8s_namespace) == []

    store_secret(cluster, k8s_namespace)
    ready(cluster, k8s_namespace, "intake")
    assert len(consumers(cluster, k8s_namespace)) == 1

    # No longer a source: its consumers go.
    http = {"type": "http", "http": {"url": "https://crm.example.com/claims"}}
    apply(cluster, k8s_namespace, {**source("intake", kafka.bootstrap_servers, topic), "spec": http})
    assert_eventually(lambda: consumers(cluster, k8s_namespace) == [], timeout=60, message="consumers removed")
    assert condition(ready(cluster, k8s_namespace, "intake"), "Ready")["reason"] == "Resolved"


def test_a_missing_topic_and_an_unreachable_broker_say_so(
    crds_installed: Cluster, kafka: Kafka, k8s_namespace: str, connector_operator: Operator
) -> None:
    cluster = crds_installed
    store_secret(cluster, k8s_namespace)
    later = f"aic-later-{k8s_namespace}"
    apply(cluster, k8s_namespace, source("no-topic", kafka.bootstrap_servers, later, **dead_letters(kafka)))
    apply(cluster, k8s_namespace, source("no-broker", UNREACHABLE, "claims-in"))

    missing = degraded_by(cluster, k8s_namespace, "no-topic", "TopicMissing")
    assert f"topic '{later}' does not exist on {kafka.bootstrap_servers}" in condition(missing, "Degraded")["message"]
    unreachable = degraded_by(cluster, k8s_namespace, "no-broker", "BrokerUnreachable")
    message = condition(unreachable, "Degraded")["message"]
    assert f"cannot reach a broker at {UNREACHABLE}" in message
    assert "check spec.kafkaSource.bootstrapServers" in message
    assert consumers(cluster, k8s_namespace) == []

    # The topic appears later: the recheck finds it and the consumers start.
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, client_id="aiplane-tests-admin")
    try:
        admin.create_topics([NewTopic(name=later, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()
    found = ready(cluster, k8s_namespace, "no-topic")
    assert found["status"]["partitions"] == 3
    assert [d["metadata"]["name"] for d in consumers(cluster, k8s_namespace)] == ["no-topic-source"]


def test_a_source_without_its_dead_letter_topic_runs_degraded_until_the_topic_exists(
    crds_installed: Cluster, kafka: Kafka, k8s_namespace: str, connector_operator: Operator
) -> None:
    cluster = crds_installed
    store_secret(cluster, k8s_namespace)
    topic = kafka.new_topic(partitions=1, prefix="aic-nodlq")
    apply(cluster, k8s_namespace, source("intake", kafka.bootstrap_servers, topic))

    def degraded_but_running() -> str:
        found = connector_named(cluster, k8s_namespace, "intake")
        ready, degraded = condition(found, "Ready"), condition(found, "Degraded")
        assert (ready["status"], ready["reason"]) == ("True", "ConsumersReady"), ready
        assert (degraded["status"], degraded["reason"]) == ("True", "DeadLetterTopicMissing"), degraded
        message: str = degraded["message"]
        return message

    message = assert_eventually(degraded_but_running, timeout=90, message="Ready, and Degraded for its dead letters")
    assert f"dead-letter topic '{topic}.dlq' does not exist on {kafka.bootstrap_servers}" in message
    assert len(consumers(cluster, k8s_namespace)) == 1

    # The recheck finds the topic once it is made.
    ensure_topics(kafka.bootstrap_servers, [f"{topic}.dlq"], partitions=1)
    assert condition(ready(cluster, k8s_namespace, "intake"), "Degraded")["reason"] == "AsExpected"


def test_call_time_connectors_are_ready_when_their_secrets_resolve(
    crds_installed: Cluster, k8s_namespace: str, connector_operator: Operator
) -> None:
    cluster = crds_installed
    postgres = {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Connector",
        "metadata": {"name": "claims-db"},
        "spec": {"type": "postgres", "postgres": {"dsn": {"name": "claims-db", "key": "dsn"}}},
    }
    http = {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Connector",
        "metadata": {"name": "crm"},
        "spec": {"type": "http", "http": {"url": "https://crm.example.com/claims"}},
    }
    apply(cluster, k8s_namespace, postgres)
    apply(cluster, k8s_namespace, http)
    found = degraded_by(cluster, k8s_namespace, "claims-db", "SecretMissing")
    assert "Secret 'claims-db' (for spec.postgres.dsn) does not exist" in condition(found, "Degraded")["message"]
    assert condition(ready(cluster, k8s_namespace, "crm"), "Ready")["reason"] == "Resolved"

    cluster.kubectl("create", "secret", "generic", "claims-db", "-n", k8s_namespace, "--from-literal=other=x")
    found = degraded_by(cluster, k8s_namespace, "claims-db", "SecretMissing")

    def says_key() -> None:
        message = condition(connector_named(cluster, k8s_namespace, "claims-db"), "Degraded")["message"]
        assert "Secret 'claims-db' has no key 'dsn'" in message

    assert_eventually(says_key, timeout=30)
    cluster.kubectl("delete", "secret", "claims-db", "-n", k8s_namespace)
    cluster.kubectl("create", "secret", "generic", "claims-db", "-n", k8s_namespace, "--from-literal=dsn=host=db")
    assert condition(ready(cluster, k8s_namespace, "claims-db"), "Ready")["reason"] == "Resolved"
    assert consumers(cluster, k8s_namespace) == []


def test_a_governed_source_says_what_its_namespace_lacks_until_it_has_it(
    crds_installed: Cluster, kafka: Kafka, k8s_namespace: str, start_operator: Any
) -> None:
    # The settings the chart gives the operator: consumers run as this account, with the PII key of this Secret,
    # both looked for in the Connector's namespace (here not the chart's, so nothing is there yet).
    op: Operator = start_operator(
        "governed-operator",
        AIPLANE_CONNECTOR_RECHECK_S="2",
        AIPLANE_CONNECTOR_SERVICE_ACCOUNT="intake-consumer",
        AIPLANE_PII_SECRET="aiplane-pii",
    )
    wait_leading(op)
    cluster = crds_installed
    topic = kafka.new_topic(partitions=1, prefix="aic-governed")
    store_secret(cluster, k8s_namespace)
    apply(cluster, k8s_namespace, source("intake", kafka.bootstrap_servers, topic, **dead_letters(kafka)))

    # Everything it lacks, in one message.
    message = condition(degraded_by(cluster, k8s_namespace, "intake", "SecretMissing"), "Degraded")["message"]
    assert "Secret 'aiplane-pii' (for the PII key of governed consumers" in message
    assert f"ServiceAccount 'intake-consumer' does not exist in namespace {k8s_namespace}" in message
    assert consumers(cluster, k8s_namespace) == []

    cluster.kubectl("create", "secret", "generic", "aiplane-pii", "-n", k8s_namespace, "--from-literal=key=a2V5")
    degraded_by(cluster, k8s_namespace, "intake", "ServiceAccountMissing")
    cluster.kubectl("create", "serviceaccount", "intake-consumer", "-n", k8s_namespace)
    found = degraded_by(cluster, k8s_namespace, "intake", "ServiceAccountNotAuthorized")
    message = condition(found, "Degraded")["message"]
    assert "ServiceAccount 'intake-consumer' may not get workflows, list workflows, watch workflows," in message
    assert "watch policies (group aiplane.io)" in message
    assert consumers(cluster, k8s_namespace) == []

    # The Role the chart gives its own namespace's consumers; one verb short is still said.
    kinds = ",".join(f"{kind}.aiplane.io" for kind in ("workflows", "models", "connectors", "policies"))
    cluster.kubectl("create", "role", "intake-consumer", "-n", k8s_namespace, "--verb=get,list", f"--resource={kinds}")
    cluster.kubectl(
        "create", "rolebinding", "intake-consumer", "-n", k8s_namespace,
        "--role=intake-consumer", f"--serviceaccount={k8s_namespace}:intake-consumer",
    )  # fmt: skip

    def watch_missing() -> None:
        found = connector_named(cluster, k8s_namespace, "intake")
        message = condition(found, "Degraded")["message"]
        assert "may not watch workflows, watch models, watch connectors, watch policies (group" in message

    assert_eventually(watch_missing, timeout=60)
    role = get(cluster, k8s_namespace, "role", "intake-consumer")
    role["rules"][0]["verbs"] = ["get", "list", "watch"]
    apply(cluster, k8s_namespace, role)

    ready(cluster, k8s_namespace, "intake")
    (deployment,) = consumers(cluster, k8s_namespace)
    pod = deployment["spec"]["template"]["spec"]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("intake-consumer", True)
    (container,) = pod["containers"]
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container["env"]}
    assert env["AIPLANE_PII_KEY"] == {"name": "aiplane-pii", "key": "key"}
