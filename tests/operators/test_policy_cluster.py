"""The Policy operator on the real test cluster: status names what a Policy selects and follows the namespace's
resources as they come, change labels and go; an approval rule that does not compile is Ready=False naming it, and
so is a tokenizing Policy whose namespace's governed Kafka consumers lack the PII key's Secret."""

from __future__ import annotations

from typing import Any

from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually
from tests.operators.conftest import Operator, wait_leading
from tests.operators.kube import apply, condition, get

API = "aiplane.io/v1alpha1"


def policy(name: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"selector": {"kinds": ["Workflow", "Connector"], "matchLabels": labels}, **spec},
    }


def workflow(name: str, labels: dict[str, str]) -> dict[str, Any]:
    step = {"name": "decide", "type": "rules", "rules": {"set": {"big": "input.n > 5"}}}
    return {
        "apiVersion": API,
        "kind": "Workflow",
        "metadata": {"name": name, "labels": labels},
        "spec": {"steps": [step]},
    }


def connector(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Connector",
        "metadata": {"name": name, "labels": labels},
        "spec": {"type": "http", "http": {"url": "https://claims.example.com/{id}"}},
    }


def model(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Model",
        "metadata": {"name": name, "labels": labels},
        "spec": {"bento": "service:ClaimsExtractor", "version": "1.0.0"},
    }


def status_of(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    found = get(cluster, namespace, "policy", name)
    return found


def test_status_follows_what_the_policy_selects(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator
) -> None:
    cluster, ns = crds_installed, k8s_namespace
    claims = {"team": "claims"}
    apply(cluster, ns, workflow("triage", claims))
    apply(cluster, ns, workflow("fraud-check", {"team": "fraud"}))
    apply(cluster, ns, connector("claims-sink", claims))
    apply(cluster, ns, policy("claims-governance", claims, residency={"regions": ["eu-west"]}))

    def selecting(workflows: list[str], connectors: list[str]) -> None:
        found = status_of(cluster, ns, "claims-governance")
        ready = condition(found, "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "Selecting"), ready
        selection = found["status"]["selection"]
        assert (selection.get("workflows", []), selection.get("connectors", [])) == (workflows, connectors)
        assert found["status"]["selected"] == len(workflows) + len(connectors)
        count = f"{len(workflows)} Workflow{'' if len(workflows) == 1 else 's'}"
        assert ready["message"].startswith(f"selects {count}, 0 Models, ")

    assert_eventually(lambda: selecting(["triage"], ["claims-sink"]), timeout=60)
    printed = cluster.kubectl("get", "aip", "claims-governance", "-n", ns).stdout.splitlines()[1].split()
    assert printed[1:3] == ["2", "True"]

    # A resource that comes, and one whose labels change, are (de)selected with no change to the Policy.
    apply(cluster, ns, workflow("intake", claims))
    apply(cluster, ns, workflow("fraud-check", claims))
    assert_eventually(lambda: selecting(["fraud-check", "intake", "triage"], ["claims-sink"]), timeout=60)
    cluster.kubectl("delete", "-n", ns, "connector", "claims-sink")
    cluster.kubectl("label", "-n", ns, "workflow", "fraud-check", "team=fraud", "--overwrite")
    assert_eventually(lambda: selecting(["intake", "triage"], []), timeout=60)


def test_status_names_the_models_a_policy_selects(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator
) -> None:
    cluster, ns = crds_installed, k8s_namespace
    apply(cluster, ns, model("extractor", {"team": "claims"}))
    apply(cluster, ns, model("fraud-scorer", {"team": "fraud"}))
    governance = policy("claims-models", {"team": "claims"}, residency={"regions": ["eu-west"]})
    governance["spec"]["selector"]["kinds"] = ["Model"]
    apply(cluster, ns, governance)

    def selecting(models: list[str]) -> None:
        found = status_of(cluster, ns, "claims-models")
        ready = condition(found, "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "Selecting"), ready
        assert found["status"]["selection"].get("models", []) == models
        assert found["status"]["selected"] == len(models)
        assert f", {len(models)} Model{'' if len(models) == 1 else 's'}, " in ready["message"], ready

    assert_eventually(lambda: selecting(["extractor"]), timeout=60)
    cluster.kubectl("label", "-n", ns, "model", "fraud-scorer", "team=claims", "--overwrite")
    assert_eventually(lambda: selecting(["extractor", "fraud-scorer"]), timeout=60)


def test_an_approval_rule_that_does_not_compile_is_reported(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator
) -> None:
    cluster, ns = crds_installed, k8s_namespace
    rules = [{"name": "large-claim", "when": "input.amount > 10000 ||", "roles": ["approver"], "quorum": 2}]
    apply(cluster, ns, policy("strict", {"team": "claims"}, approvals=rules))

    def broken() -> None:
        found = status_of(cluster, ns, "strict")
        ready = condition(found, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "CelCompileError"), ready
        assert (
            "approval rule 'large-claim': cannot compile CEL expression 'input.amount > 10000 ||'" in ready["message"]
        )
        assert found["status"]["observedGeneration"] == found["metadata"]["generation"]

    assert_eventually(broken, timeout=60)
    rules[0]["when"] = "input.amount > 10000"
    apply(cluster, ns, policy("strict", {"team": "claims"}, approvals=rules))

    def fixed() -> None:
        ready = condition(status_of(cluster, ns, "strict"), "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "NothingSelected"), ready

    assert_eventually(fixed, timeout=60)


def test_a_tokenizing_policy_is_not_ready_until_its_namespace_has_the_pii_key(
    crds_installed: Cluster, k8s_namespace: str, start_operator: Any
) -> None:
    # The chart's governed settings: consumers in a Connector's namespace read the PII key from this Secret there.
    op: Operator = start_operator(
        "pii-operator",
        AIPLANE_CONNECTOR_RECHECK_S="2",
        AIPLANE_CONNECTOR_SERVICE_ACCOUNT="kafka-source",
        AIPLANE_PII_SECRET="aiplane-pii",
    )
    wait_leading(op)
    cluster, ns = crds_installed, k8s_namespace
    claims = {"team": "claims"}
    source = {"bootstrapServers": "127.0.0.1:1", "topic": "claims-in", "workflow": "triage"}
    intake = {**connector("intake", claims), "spec": {"type": "kafkaSource", "kafkaSource": source}}
    apply(cluster, ns, intake)
    apply(cluster, ns, policy("masking", claims, pii={"action": "tokenize"}))
    apply(cluster, ns, policy("redacting", claims, pii={"action": "redact"}))

    def ready_is(name: str, status: str, reason: str) -> str:
        ready = condition(status_of(cluster, ns, name), "Ready")
        assert (ready["status"], ready["reason"]) == (status, reason), ready
        message: str = ready["message"]
        return message

    message = assert_eventually(lambda: ready_is("masking", "False", "SecretMissing"), timeout=60)
    assert "kafkaSource Connectors intake read from Secret 'aiplane-pii' (key 'key')" in message
    assert f"in namespace {ns}: it does not exist" in message
    # Redaction needs no key.
    assert_eventually(lambda: ready_is("redacting", "True", "Selecting"), timeout=60)

    # Secrets are not watched: the recheck finds the one created later, and says when it lacks the key.
    cluster.kubectl("create", "secret", "generic", "aiplane-pii", "-n", ns, "--from-literal=other=a2V5")
    assert_eventually(lambda: "it has no key 'key'" in ready_is("masking", "False", "SecretMissing"), timeout=60)
    cluster.kubectl("delete", "secret", "aiplane-pii", "-n", ns)
    cluster.kubectl("create", "secret", "generic", "aiplane-pii", "-n", ns, "--from-literal=key=a2V5")
    assert_eventually(lambda: ready_is("masking", "True", "Selecting"), timeout=60)

    # Without a kafkaSource in the namespace nothing here reads the key: no longer required.
    cluster.kubectl("delete", "secret", "aiplane-pii", "-n", ns)
    cluster.kubectl("delete", "connector", "intake", "-n", ns)
    assert_eventually(lambda: ready_is("masking", "True", "NothingSelected"), timeout=60)
