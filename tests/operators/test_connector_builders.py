"""The Connector operator's pure parts without a cluster: the consumer Deployment, the secret refs, the replica cap,
and how findings fold into Ready and Degraded."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from crds.connector import Connector
from operators.connector import builders, status
from operators.connector.broker import Probe
from operators.connector.config import Config

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CONFIG = Config(image="aiplane/aiplane:test")
OWNER = builders.Owner(name="intake", namespace="ns", uid="u-1")


def connector(type_: str = "kafkaSource", annotations: dict[str, str] | None = None, **block: Any) -> Connector:
    blocks: dict[str, dict[str, Any]] = {
        "kafkaSource": {"bootstrapServers": "kafka:9092", "topic": "claims-in", "workflow": "triage"},
        "kafkaSink": {"bootstrapServers": "kafka:9092", "topic": "claims-out"},
        "http": {"url": "https://example.com/x"},
        "postgres": {"dsn": {"name": "db", "key": "dsn"}},
    }
    metadata: dict[str, Any] = {"name": "intake", "namespace": "ns", "uid": "u-1", "generation": 3}
    if annotations:
        metadata["annotations"] = annotations
    return Connector.model_validate({"metadata": metadata, "spec": {"type": type_, type_: {**blocks[type_], **block}}})


def test_the_consumer_deployment_runs_the_source_runtime_with_no_secret_in_it() -> None:
    auth = {"username": {"name": "kafka-user", "key": "user"}, "password": {"name": "kafka-user", "key": "pass"}}
    source = connector(auth=auth, replicas=4)
    deployment = builders.deployment(source, OWNER, 2, CONFIG)
    assert deployment["metadata"]["name"] == "intake-source"
    assert deployment["metadata"]["ownerReferences"] == [OWNER.reference()]
    assert deployment["spec"]["replicas"] == 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "aiplane/aiplane:test"
    assert container["command"] == ["python", "-m", "connectors.kafka", "source"]
    assert container["args"] == [
        "--connector", "intake", "--tenant", "ns",
        "--spec", "$(AIPLANE_CONNECTOR_SPEC)", "--db-url", "$(AIPLANE_DATABASE_URL)",
    ]  # fmt: skip
    env = {e["name"]: e for e in container["env"]}
    assert json.loads(env["AIPLANE_CONNECTOR_SPEC"]["value"])["topic"] == "claims-in"
    assert env["AIPLANE_DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "aiplane-store", "key": "url"}}
    assert env["AIPLANE_SECRETS_DIR"]["value"] == "/var/run/secrets/aiplane"
    tmp, volume = deployment["spec"]["template"]["spec"]["volumes"]
    assert tmp == {"name": "tmp", "emptyDir": {}}
    assert volume["secret"] == {
        "secretName": "kafka-user",
        "items": [{"key": "user", "path": "user"}, {"key": "pass", "path": "pass"}],
    }
    _, mount = container["volumeMounts"]
    assert (mount["name"], mount["mountPath"], mount["readOnly"]) == (
        volume["name"],
        "/var/run/secrets/aiplane/kafka-user",
        True,
    )
    # Refs only: no env var carries a literal value other than the refs-only spec block and the directory.
    assert [e["name"] for e in container["env"] if "value" in e] == ["AIPLANE_CONNECTOR_SPEC", "AIPLANE_SECRETS_DIR"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_given_a_service_account_the_consumer_enforces_its_namespaces_policies() -> None:
    config = Config(image="aiplane/aiplane:test", service_account="aiplane-worker", pii_secret="aiplane-pii")
    pod = builders.deployment(connector(), OWNER, 1, config)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "aiplane-worker"
    (container,) = pod["containers"]
    assert container["command"] == ["aiplane", "kafka-source"]
    assert container["args"][-2:] == ["--from-cluster", "ns"]
    env = {e["name"]: e for e in container["env"]}
    assert env["AIPLANE_PII_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "aiplane-pii", "key": "key"}}
    assert [e["name"] for e in container["env"] if "value" in e] == ["AIPLANE_CONNECTOR_SPEC"]
    # Without one: no Policies (a consumer without read access to them would only fail to start).
    plain = builders.deployment(connector(), OWNER, 1, CONFIG)["spec"]["template"]["spec"]
    assert "serviceAccountName" not in plain
    assert plain["containers"][0]["command"] == ["python", "-m", "connectors.kafka", "source"]
    # Only the governed one gets a token (it watches the namespace); the plain one never calls the API.
    assert (pod["automountServiceAccountToken"], plain["automountServiceAccountToken"]) == (True, False)


@pytest.mark.parametrize("config", [CONFIG, Config(service_account="sa", pii_secret="pii")], ids=["plain", "governed"])
def test_consumer_pods_meet_pod_security_restricted(config: Config) -> None:
    """What a namespace enforcing `restricted` checks (the chart's consumers run in one: tests/helm)."""
    auth = {"username": {"name": "kafka-user", "key": "user"}, "password": {"name": "kafka-user", "key": "pass"}}
    pod = builders.deployment(connector(auth=auth), OWNER, 1, config)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    # Volumes of the kinds `restricted` allows only; a writable /tmp since the root filesystem is read-only.
    assert {next(k for k in volume if k != "name") for volume in pod["volumes"]} == {"emptyDir", "secret"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


@pytest.mark.parametrize("annotate", [False, True], ids=["podmonitor", "annotations"])
def test_consumers_serve_metrics_on_the_configured_port(annotate: bool) -> None:
    """Only consumer pods set the connector metrics (lag, dead letters): they serve them where Prometheus looks."""
    for governed in (False, True):
        config = Config(service_account="sa" if governed else None, metrics_port=9191, metrics_annotations=annotate)
        template = builders.deployment(connector(), OWNER, 1, config)["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert container["args"][container["args"].index("--metrics-port") + 1] == "9191"
        assert container["ports"] == [{"name": "metrics", "containerPort": 9191}]
        # A PodMonitor (the chart's, with the Prometheus Operator) scrapes the port; annotations are for the rest.
        assert template["metadata"].get("annotations") == (
            {"prometheus.io/scrape": "true", "prometheus.io/port": "9191", "prometheus.io/path": "/metrics"}
            if annotate
            else None
        )
    bare = builders.deployment(connector(), OWNER, 1, CONFIG)["spec"]["template"]
    assert "ports" not in bare["spec"]["containers"][0]
    assert "--metrics-port" not in bare["spec"]["containers"][0]["args"]


def test_governed_consumers_of_a_region_know_it() -> None:
    regional = Config(service_account="sa", region="eu-west-1")
    (container,) = builders.deployment(connector(), OWNER, 1, regional)["spec"]["template"]["spec"]["containers"]
    assert {"name": "AIPLANE_REGION", "value": "eu-west-1"} in container["env"]
    (plain,) = builders.deployment(connector(), OWNER, 1, CONFIG)["spec"]["template"]["spec"]["containers"]
    assert "AIPLANE_REGION" not in {e["name"] for e in plain["env"]}


def test_the_metrics_port_comes_from_the_environment() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIPLANE_CONNECTOR_METRICS_PORT", "9191")
        patch.setenv("AIPLANE_CONNECTOR_METRICS_ANNOTATIONS", "true")
        config = Config.from_env()
    assert (config.metrics_port, config.metrics_annotations) == (9191, True)
    assert (Config.from_env().metrics_port, Config.from_env().metrics_annotations) == (None, False)


def test_the_service_account_and_pii_key_come_from_the_environment() -> None:
    env = {"AIPLANE_CONNECTOR_SERVICE_ACCOUNT": "sa", "AIPLANE_PII_SECRET": "pii", "AIPLANE_PII_SECRET_KEY": "k"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        config = Config.from_env()
    assert (config.service_account, config.pii_secret, config.pii_key) == ("sa", "pii", "k")


def test_the_tenant_annotation_names_the_tenant() -> None:
    source = connector(annotations={builders.TENANT_ANNOTATION: "acme"})
    args = builders.deployment(source, OWNER, 1, CONFIG)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--tenant") + 1] == "acme"


def test_consumers_are_capped_at_the_partitions() -> None:
    assert builders.consumers(4, 2) == 2
    assert builders.consumers(1, 3) == 1


def test_every_secret_ref_is_listed_with_where_it_comes_from() -> None:
    http = connector("http", headers=[{"name": "Authorization", "valueFrom": {"name": "api", "key": "token"}}])
    assert [(where, ref.name, ref.key) for where, ref in builders.secret_refs(http, CONFIG)] == [
        ("spec.http.headers[Authorization].valueFrom", "api", "token")
    ]
    source = builders.secret_refs(connector(), CONFIG)
    assert [(ref.name, ref.key) for _, ref in source] == [("aiplane-store", "url")]
    # Governed consumers also read the PII key from the Connector's namespace.
    governed = Config(service_account="sa", pii_secret="pii", pii_key="k")
    assert [(where, ref.name, ref.key) for where, ref in builders.secret_refs(connector(), governed)][1:] == [
        ("the PII key of governed consumers (operator setting AIPLANE_PII_SECRET)", "pii", "k")
    ]
    assert builders.service_account(connector(), governed) == "sa"
    assert builders.service_account(connector("kafkaSink"), governed) is None
    assert [ref.name for _, ref in builders.secret_refs(connector("kafkaSink"), governed)] == []


def test_a_source_with_its_consumers_ready_is_ready_and_says_why_it_has_fewer() -> None:
    found = status.Found([], Probe(partitions=2), status.Consumers(desired=2, ready=2), desired=2)
    folded = status.fold(connector(replicas=4), generation=3, found=found, now=NOW)
    ready, degraded = folded.conditions
    assert (ready.status, ready.reason) == ("True", "ConsumersReady")
    assert "2/2 consumers ready" in ready.message
    assert "replicas is 4; topic 'claims-in' has 2 partitions" in ready.message
    assert (degraded.status, degraded.reason) == ("False", "AsExpected")
    assert (folded.replicas, folded.ready_replicas, folded.partitions, folded.observed_generation) == (2, 2, 2, 3)


def test_a_source_without_its_dead_letter_topic_runs_degraded() -> None:
    probe = Probe(partitions=2, dead_letters_missing="claims-in.dlq")
    found = status.Found([], probe, status.Consumers(desired=2, ready=2), desired=2)
    ready, degraded = status.fold(connector(), generation=1, found=found, now=NOW).conditions
    # Its consumers run; what fails is the first message that cannot become a task.
    assert (ready.status, ready.reason) == ("True", "ConsumersReady")
    assert (degraded.status, degraded.reason) == ("True", "DeadLetterTopicMissing")
    assert "dead-letter topic 'claims-in.dlq' does not exist on kafka:9092" in degraded.message
    assert "create it or set spec.kafkaSource.deadLetterTopic" in degraded.message


def test_each_problem_is_a_reason_with_what_to_fix() -> None:
    cases = [
        (
            status.Found(["Secret 'db' (for spec.postgres.dsn) does not exist"]),
            "SecretMissing",
            "create it in namespace ns",
        ),
        (
            status.Found([], Probe(error="cannot reach a broker at kafka:9092: timeout")),
            "BrokerUnreachable",
            "bootstrapServers",
        ),
        (status.Found([], Probe(partitions=None)), "TopicMissing", "topic 'claims-in' does not exist on kafka:9092"),
        (status.Found([], forbidden="grant its ServiceAccount get on secrets"), "SecretsForbidden", "get on secrets"),
        (
            status.Found([], account="consumer", account_missing=True),
            "ServiceAccountMissing",
            "ServiceAccount 'consumer' does not exist in namespace ns: governed consumer pods run as it",
        ),
        (
            status.Found([], account="consumer", account_denied=["list policies", "watch policies"]),
            "ServiceAccountNotAuthorized",
            "ServiceAccount 'consumer' may not list policies, watch policies (group aiplane.io) in namespace ns",
        ),
        (
            status.Found(
                [], forbidden="grant create on subjectaccessreviews", forbidden_reason="AccessReviewsForbidden"
            ),
            "AccessReviewsForbidden",
            "subjectaccessreviews",
        ),
    ]
    for found, reason, says in cases:
        ready, degraded = status.fold(connector(), generation=1, found=found, now=NOW).conditions
        assert (ready.status, ready.reason, degraded.status, degraded.reason) == ("False", reason, "True", reason)
        assert says in degraded.message


def test_what_a_namespace_lacks_for_governed_consumers_is_said_at_once() -> None:
    found = status.Found(["Secret 'pii' (for the PII key) does not exist"], account="consumer", account_missing=True)
    ready, degraded = status.fold(connector(), generation=1, found=found, now=NOW).conditions
    assert (ready.reason, degraded.reason) == ("SecretMissing", "SecretMissing")
    assert "Secret 'pii' (for the PII key) does not exist; create it in namespace ns" in degraded.message
    assert "ServiceAccount 'consumer' does not exist in namespace ns" in degraded.message
    assert "bind it a Role with get, list and watch on workflows, models, connectors and policies" in degraded.message


def test_call_time_connectors_are_ready_when_their_secrets_resolve() -> None:
    ready, degraded = status.fold(connector("postgres"), generation=1, found=status.Found([]), now=NOW).conditions
    assert (ready.status, ready.reason, degraded.status) == ("True", "Resolved", "False")
    folded = status.fold(connector("postgres"), generation=1, found=status.Found([]), now=NOW)
    assert (folded.replicas, folded.ready_replicas) == (None, None)


def test_a_spec_that_does_not_parse_is_degraded_with_the_fields() -> None:
    folded = status.invalid(None, 4, "spec.http.url: String should match pattern", NOW)
    ready, degraded = folded.conditions
    assert (ready.status, ready.reason, degraded.status, degraded.reason) == (
        "False",
        "InvalidSpec",
        "True",
        "InvalidSpec",
    )
    assert degraded.message == "spec.http.url: String should match pattern"
    assert folded.observed_generation == 4
