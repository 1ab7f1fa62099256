"""The chart, rendered: lint, values schema, least privilege, Pod Security `restricted`, network policies,
scrape config, dashboards and regions. No cluster needed (tests/helm/test_chart_cluster.py installs it)."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from crds.connector import Connector
from operators.connector import builders
from operators.connector.config import Config as ConnectorConfig
from operators.model.config import Config
from tests.helm.chart import CHART, REPO_ROOT, TRY_OUT, base_values, helm, objects, pod_specs, pod_template, render

# Value sets the least-privilege and PSS checks run over: defaults, every optional part on, every one off.
VARIANTS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "all-on": (
        "--set",
        "tracing.otlpEndpoint=http://otel:4318",
        "--set",
        "metrics.prometheusUrl=http://prometheus:9090",
        "--set",
        "postgresql.bundled.persistence.enabled=true",
        "--set",
        "metrics.serviceMonitor=true",
        "--set",
        "alerts.prometheusRule=true",
    ),
    "region": ("-f", str(REPO_ROOT / "helm" / "examples" / "region-eu-west-1.yaml")),
    "region-us-east-1": ("-f", str(REPO_ROOT / "helm" / "examples" / "region-us-east-1.yaml")),
    "tryout": ("-f", str(REPO_ROOT / "helm" / "examples" / "tryout.yaml")),
}
# Listing or watching Secrets reads every Secret of a namespace (or the cluster); `get` reads one named Secret.
SECRET_BULK_VERBS = {"list", "watch", "*"}


def test_generated_files_are_current() -> None:
    command = [sys.executable, str(REPO_ROOT / "helm" / "generate.py"), "--check"]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_chart_crds_are_the_repos_crds() -> None:
    """Not a copy: links into crds/, so the chart installs exactly what `make generate` wrote."""
    for crd in (REPO_ROOT / "crds").glob("*.yaml"):
        link = CHART / "crds" / crd.name
        assert link.is_symlink(), f"{link} must link to {crd}"
        assert link.resolve() == crd.resolve()
    docs = [doc for path in sorted((CHART / "crds").glob("*.yaml")) for doc in objects(path.read_text())]
    # The operators' leader election needs kopf's peering CRDs as well.
    assert {"Model", "Workflow", "Connector", "Policy", "ClusterKopfPeering"} <= {
        doc["spec"]["names"]["kind"] for doc in docs
    }


def test_packaged_chart_carries_the_crds(tmp_path: Path) -> None:
    helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("aiplane-*.tgz")
    with tarfile.open(archive) as tar:
        member = tar.extractfile("aiplane/crds/models.aiplane.io.yaml")
        assert member is not None, "helm package must store the linked CRD's content"
        assert member.read().decode() == (REPO_ROOT / "crds" / "models.aiplane.io.yaml").read_text()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint(variant: str) -> None:
    helm("lint", "--strict", str(CHART), *base_values(VARIANTS[variant]), *VARIANTS[variant])


@pytest.mark.parametrize(
    ("values", "says"),
    [
        (("--set", "gatway.replicas=2"), "additional properties 'gatway' not allowed"),
        (("--set", "worker.replicas=-1"), "/worker/replicas"),
        (("--set", "postgresql.bundled.enabled=false"), "/postgresql/existingSecret/name"),
        (("--set", "kafka.bootstrapServers=not a broker"), "/kafka/bootstrapServers"),
        (("--set", "region=EU West"), "/region"),
        (("--set", "gateway.resources.limits=null"), "/gateway/resources"),
        (("--set", "alerts.prometheusRule=maybe"), "/alerts/prometheusRule"),
        (("--set", "tracing.sampleRatio=2"), "/tracing/sampleRatio"),
        (("--set", "gateway.idempotencyTTL=1 day"), "/gateway/idempotencyTTL"),
        (("--set", "auditVerify.anchors[0]=12:nothex"), "/auditVerify/anchors/0"),
        (("--set", "auditVerify.schedule="), "/auditVerify/schedule"),
        (("--set", "networkPolicy.extraEgress[0].ports[0].port=0"), "/networkPolicy/extraEgress/0/ports/0/port"),
        (("--set", "networkPolicy.extraEgress[0].form[0].ipBlock.cidr=10.0.0.0/8"), "'form' not allowed"),
        (("--set", "gateway.ingressFrom[0].podSelector.matchLabels.app=web"), "metrics.scraperNamespaceSelector"),
    ],
)
def test_bad_values_fail_with_the_path(values: Sequence[str], says: str) -> None:
    proc = helm("template", "t", str(CHART), *TRY_OUT, *values, check=False)
    assert proc.returncode != 0
    assert says in proc.stderr, proc.stderr


def rbac_violations(docs: Sequence[dict[str, Any]]) -> list[str]:
    """Wildcards anywhere in a rule, and any right to list or watch Secrets."""
    found = []
    for doc in docs:
        if doc["kind"] not in {"Role", "ClusterRole"}:
            continue
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc.get("aggregationRule"):
            found.append(f"{name}: aggregated roles hide what they grant")
        for rule in doc.get("rules", []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                if any("*" in item for item in rule.get(field, [])):
                    found.append(f"{name}: wildcard in {field}: {rule}")
            secrets = "" in rule.get("apiGroups", []) and "secrets" in rule.get("resources", [])
            if secrets and SECRET_BULK_VERBS & set(rule["verbs"]):
                found.append(f"{name}: lists or watches Secrets: {rule}")
    return found


def test_rbac_check_catches_wildcards_and_secret_lists() -> None:
    bad = [
        {
            "kind": "Role",
            "metadata": {"name": "a"},
            "rules": [{"apiGroups": ["apps"], "resources": ["*"], "verbs": ["get"]}],
        },
        {
            "kind": "ClusterRole",
            "metadata": {"name": "b"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
        },
    ]
    assert len(rbac_violations(bad)) == 2


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rbac_has_no_wildcards_or_secret_lists(variant: str) -> None:
    docs = objects(render(*VARIANTS[variant]))
    assert [doc for doc in docs if doc["kind"] in {"Role", "ClusterRole"}], "the operator's role is missing"
    assert rbac_violations(docs) == []


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_pod_is_restricted_and_bounded(variant: str) -> None:
    docs = objects(render(*VARIANTS[variant]))
    specs = dict(pod_specs(docs))
    assert len(specs) >= 3
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] > 0, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert not any(spec.get(host) for host in ("hostNetwork", "hostPID", "hostIPC")), name
        for container in spec["containers"] + spec.get("initContainers", []):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert not security["capabilities"].get("add"), name
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"])
            assert {"cpu", "memory"} <= set(resources["limits"])


@pytest.mark.parametrize("follows", [True, False])
def test_one_service_account_per_component_and_tokens_only_where_needed(follows: bool) -> None:
    docs = objects(render("--set", f"fromCluster.enabled={str(follows).lower()}"))
    specs = dict(pod_specs(docs))
    accounts = [spec["serviceAccountName"] for spec in specs.values()]
    assert len(set(accounts)) == len(accounts)
    # The operator talks to the Kubernetes API; the gateway and workers only to follow their namespace.
    talks = {"operator"} | ({"gateway", "worker"} if follows else set())
    for name, spec in specs.items():
        component = name.rsplit("-", 1)[-1]
        assert spec.get("automountServiceAccountToken", True) is (component in talks), name
    bound = {
        (doc["kind"], subject["name"])
        for doc in docs
        if doc["kind"] in {"RoleBinding", "ClusterRoleBinding"}
        for subject in doc["subjects"]
    }
    # Governed Kafka consumer pods (made by the operator, not the chart) read the namespace too.
    expected = {("ClusterRoleBinding", "test-aiplane-operator"), ("RoleBinding", "test-aiplane-kafka-source")}
    if follows:
        expected |= {("RoleBinding", "test-aiplane-gateway"), ("RoleBinding", "test-aiplane-worker")}
    assert bound == expected


def test_gateway_and_workers_follow_one_namespace_read_only() -> None:
    docs = objects(render("--set", "fromCluster.namespace=claims"))
    (role,) = [doc for doc in docs if doc["kind"] == "Role" and doc["metadata"]["name"] == "test-aiplane-follower"]
    assert role["metadata"]["namespace"] == "claims"
    assert role["rules"] == [
        {
            "apiGroups": ["aiplane.io"],
            "resources": ["workflows", "models", "connectors", "policies"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    ]
    for name, spec in pod_specs(docs):
        if name.endswith(("gateway", "worker")):
            env = {item["name"]: item.get("value") for item in spec["containers"][0]["env"]}
            assert env["AIPLANE_NAMESPACE"] == "claims"


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_pdbs_topology_spread_and_operator_replicas() -> None:
    docs = objects(render())
    pdbs = [doc["spec"]["selector"]["matchLabels"] for doc in docs if doc["kind"] == "PodDisruptionBudget"]
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert any(_selects(pdb, labels) for pdb in pdbs), doc["metadata"]["name"]
        keys = {c["topologyKey"] for c in doc["spec"]["template"]["spec"]["topologySpreadConstraints"]}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        if labels["app.kubernetes.io/component"] == "operator":
            assert doc["spec"]["replicas"] == 2
            assert "--liveness=http://0.0.0.0:8080/healthz" in doc["spec"]["template"]["spec"]["containers"][0]["args"]


def test_network_policies_deny_by_default() -> None:
    docs = objects(render())
    policies = {doc["metadata"]["name"]: doc["spec"] for doc in docs if doc["kind"] == "NetworkPolicy"}
    deny = policies["test-aiplane-default-deny"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny
    assert "egress" not in deny
    for name, spec in pod_specs(docs):
        template = pod_template(next(d for d in docs if f"{d['kind']}/{d['metadata']['name']}" == name))
        assert template is not None
        assert _selects(deny["podSelector"]["matchLabels"], template["metadata"]["labels"]), name
        assert spec  # every workload is covered
    # Kafka egress only on the configured ports.
    gateway_egress = policies["test-aiplane-gateway-egress"]["egress"]
    assert {"protocol": "TCP", "port": 9092} in [port for rule in gateway_egress for port in rule["ports"]]


def _policies(*values: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc["spec"] for doc in objects(render(*values)) if doc["kind"] == "NetworkPolicy"}


def test_extra_egress_reaches_gateway_and_workers_only() -> None:
    rule = {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}
    policies = _policies(
        "--set", "networkPolicy.extraEgress[0].to[0].ipBlock.cidr=203.0.113.0/24",
        "--set", "networkPolicy.extraEgress[0].ports[0].protocol=TCP",
        "--set", "networkPolicy.extraEgress[0].ports[0].port=443",
    )  # fmt: skip
    assert rule in policies["test-aiplane-gateway-egress"]["egress"]
    assert rule in policies["test-aiplane-worker-egress"]["egress"]
    others = [name for name, spec in policies.items() if rule in spec.get("egress", [])]
    assert sorted(others) == ["test-aiplane-gateway-egress", "test-aiplane-worker-egress"]
    assert not any(rule in spec.get("egress", []) for spec in _policies().values())


@pytest.mark.parametrize(
    ("endpoint", "port"),
    [("http://otel:4318", 4318), ("http://collector.observability:14318", 14318), ("https://otel.example", 443),
     ("http://otel", 80)],
)  # fmt: skip
def test_otlp_egress_takes_the_endpoints_port(endpoint: str, port: int) -> None:
    policies = _policies("--set", f"tracing.otlpEndpoint={endpoint}")
    for component in ("gateway", "worker"):
        egress = policies[f"test-aiplane-{component}-egress"]["egress"]
        # The rule with ports only (the collector's address is the user's): the one after the model servers'.
        models = next(i for i, rule in enumerate(egress) if "model-server" in str(rule.get("to")))
        assert egress[models + 1] == {"ports": [{"protocol": "TCP", "port": port}]}
    assert all("4318" not in str(spec) for spec in _policies().values())


def test_prometheus_scrapes_the_gateway_when_ingress_is_narrowed() -> None:
    web = {"podSelector": {"matchLabels": {"app": "web"}}}
    policies = _policies(
        "--set", "gateway.ingressFrom[0].podSelector.matchLabels.app=web",
        "--set", "metrics.scraperNamespaceSelector.team=monitoring",
        "--set", "metrics.scraperPodSelector.app=prometheus",
    )  # fmt: skip
    clients, scrapes = policies["test-aiplane-gateway-ingress"]["ingress"]
    port = [{"protocol": "TCP", "port": 8080}]
    assert clients == {"ports": port, "from": [web]}
    prometheus = {
        "namespaceSelector": {"matchLabels": {"team": "monitoring"}},
        "podSelector": {"matchLabels": {"app": "prometheus"}},
    }
    assert scrapes == {"ports": port, "from": [prometheus]}
    # The same peer scrapes the workers, operators and Kafka consumers.
    assert policies["test-aiplane-metrics-ingress"]["ingress"][0]["from"] == [prometheus]
    assert policies["test-aiplane-kafka-source"]["ingress"][0]["from"] == [prometheus]
    # Without ingressFrom everyone may call the gateway already: one rule.
    assert _policies()["test-aiplane-gateway-ingress"]["ingress"] == [{"ports": port}]


def test_scrape_config_follows_the_cluster() -> None:
    plain = objects(render())
    assert not [doc for doc in plain if doc["kind"] in {"ServiceMonitor", "PrometheusRule"}]
    annotated = [name for name, spec in pod_specs(plain) if "gateway" in name or "worker" in name]
    for doc in plain:
        if doc["kind"] == "Deployment" and f"Deployment/{doc['metadata']['name']}" in annotated:
            assert doc["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert any(doc["kind"] == "ConfigMap" and "aiplane.rules.yaml" in doc["data"] for doc in plain)

    # "auto" looks at the cluster's API groups (helm template: --api-versions stands in for them).
    capabilities = [f"--api-versions=monitoring.coreos.com/v1/{kind}" for kind in ("ServiceMonitor", "PrometheusRule")]
    operator_cluster = objects(render(*capabilities))
    kinds = [doc["kind"] for doc in operator_cluster]
    assert kinds.count("ServiceMonitor") == 3  # gateway, workers, operators
    assert kinds.count("PrometheusRule") == 1
    # Kafka consumers have no Service: a PodMonitor selects the pods the Connector operator labels.
    (monitor,) = [doc for doc in operator_cluster if doc["kind"] == "PodMonitor"]
    assert _selects(monitor["spec"]["selector"]["matchLabels"], builders.labels("intake"))
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert _operator_env(operator_cluster)["AIPLANE_CONNECTOR_METRICS_ANNOTATIONS"] == "false"
    assert _operator_env(plain)["AIPLANE_CONNECTOR_METRICS_ANNOTATIONS"] == "true"
    for doc in operator_cluster:
        if doc["kind"] == "Deployment":
            assert "prometheus.io/scrape" not in doc["spec"]["template"]["metadata"].get("annotations", {})
    rule = next(doc for doc in operator_cluster if doc["kind"] == "PrometheusRule")
    assert {group["name"] for group in rule["spec"]["groups"]} >= {"aiplane.slo", "aiplane.engine"}


def test_dashboards_are_configmaps_for_grafanas_sidecar() -> None:
    maps = [doc for doc in objects(render()) if doc["kind"] == "ConfigMap" and "dashboard" in doc["metadata"]["name"]]
    assert {next(iter(doc["data"])) for doc in maps} == {
        "overview.json",
        "models.json",
        "connectors.json",
        "governance.json",
    }
    assert all(doc["metadata"]["labels"]["grafana_dashboard"] == "1" for doc in maps)


def _gateway_env(*values: str) -> dict[str, Any]:
    docs = objects(render(*values))
    gateway = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("gateway"))
    return {e["name"]: e.get("value") for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_idempotency_keys_are_kept_24h_unless_set() -> None:
    assert _gateway_env()["AIPLANE_IDEMPOTENCY_TTL"] == "24h"
    assert _gateway_env("--set", "gateway.idempotencyTTL=90m")["AIPLANE_IDEMPOTENCY_TTL"] == "90m"


def test_runbook_base_url_is_configurable() -> None:
    docs = objects(render("--set", "alerts.runbookBaseUrl=https://wiki.example.com/aiplane/"))
    rules = next(doc for doc in docs if doc["kind"] == "ConfigMap" and "aiplane.rules.yaml" in doc["data"])
    text = rules["data"]["aiplane.rules.yaml"]
    assert "https://wiki.example.com/aiplane/#aiplaneslabreaches" in text
    assert "aiplane.github.io" not in text


@pytest.mark.parametrize(("variant", "region"), [("region", "eu-west-1"), ("region-us-east-1", "us-east-1")])
def test_region_values_label_pods_and_pin_the_store(variant: str, region: str) -> None:
    docs = objects(render(*VARIANTS[variant]))
    for name, spec in pod_specs(docs):
        template = pod_template(next(d for d in docs if f"{d['kind']}/{d['metadata']['name']}" == name))
        assert template is not None
        assert template["metadata"]["labels"]["aiplane.io/region"] == region
        env = {item["name"]: item for item in spec["containers"][0]["env"]}
        assert env["AIPLANE_REGION"]["value"] == region
        if "operator" not in name:
            assert env["AIPLANE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == f"aiplane-store-{region}"
        else:
            # Models without spec.image run aiplane's own image, which holds the shipped planners.
            assert env["AIPLANE_SERVING_IMAGE"]["value"] == spec["containers"][0]["image"]
        if not name.endswith(("operator", "audit-verify")):  # the verify job makes no spans
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability:4318"


def test_a_regions_kafka_consumers_keep_its_data_as_its_gateway_does() -> None:
    """The operator hands the release's region to governed consumers, whose intake then refuses workflows pinned
    elsewhere (policies.residency's home), as the region's gateway and workers do."""
    env = {k: v for k, v in _operator_env(objects(render(*VARIANTS["region"]))).items() if v is not None}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        config = ConnectorConfig.from_env()
    source = Connector.model_validate(
        {
            "metadata": {"name": "intake", "namespace": "aiplane", "uid": "u"},
            "spec": {
                "type": "kafkaSource",
                "kafkaSource": {"bootstrapServers": "k:9092", "topic": "t", "workflow": "w"},
            },
        }
    )
    pod = builders.deployment(source, builders.Owner("intake", "aiplane", "u"), 1, config)["spec"]["template"]["spec"]
    consumer_env = {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}
    assert consumer_env["AIPLANE_REGION"] == "eu-west-1"


def test_cluster_scoped_objects_name_the_releases_namespace() -> None:
    """Two releases of one name in two namespaces must not share (and take over) a cluster-scoped object."""
    names = []
    for namespace in ("team-a", "team-b"):
        docs = objects(render(namespace=namespace))
        scoped = {d["kind"]: d for d in docs if d["kind"].startswith(("ValidatingAdmissionPolicy", "ClusterRole"))}
        assert set(scoped) == {
            "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ClusterRole", "ClusterRoleBinding"
        }  # fmt: skip
        assert scoped["ValidatingAdmissionPolicy"]["metadata"]["name"] == f"{namespace}-test-aiplane-requested-by"
        assert (
            scoped["ValidatingAdmissionPolicyBinding"]["spec"]["policyName"] == f"{namespace}-test-aiplane-requested-by"
        )
        names.append({d["metadata"]["name"] for d in scoped.values()})
    assert not names[0] & names[1]
    # Long names are cut before the suffix, which stays.
    long = objects(render(release="r" * 40, namespace="n" * 40))
    policy = next(d for d in long if d["kind"] == "ValidatingAdmissionPolicy")["metadata"]["name"]
    assert policy.endswith("-requested-by")
    assert len(policy) <= 63


def test_image_digest_wins_over_tag() -> None:
    digest = "sha256:" + "a" * 64
    for _, spec in pod_specs(objects(render("--set", f"image.digest={digest}"))):
        image = spec["containers"][0]["image"]
        assert image.endswith(digest) or image.startswith("docker.io/library/postgres")


@pytest.mark.parametrize("existing", ["", "my-pii-key"])
def test_gateway_and_workers_share_one_pii_key(existing: str) -> None:
    docs = objects(render("--set", f"pii.existingSecret.name={existing}"))
    refs = set()
    for name, spec in pod_specs(docs):
        if name.endswith(("gateway", "worker")):
            env = {item["name"]: item for item in spec["containers"][0]["env"]}
            ref = env["AIPLANE_PII_KEY"]["valueFrom"]["secretKeyRef"]
            refs.add((ref["name"], ref["key"]))
    made = [doc for doc in docs if doc["kind"] == "Secret" and doc["metadata"]["name"].endswith("-pii")]
    if existing:
        assert refs == {(existing, "key")}
        assert made == []
    else:
        assert refs == {("test-aiplane-pii", "key")}
        assert len(base64.b64decode(made[0]["stringData"]["key"], validate=True)) == 32
        # `helm uninstall` keeps it: without it the store's tokens and hashes could never be opened again.
        assert made[0]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_operator_gives_consumers_this_image_and_the_store_secret() -> None:
    digest = "sha256:" + "b" * 64
    docs = objects(render("--set", f"image.digest={digest}"))
    (operator,) = [spec for name, spec in pod_specs(docs) if name.endswith("operator")]
    env = {item["name"]: item.get("value") for item in operator["containers"][0]["env"]}
    assert env["AIPLANE_CONNECTOR_IMAGE"] == operator["containers"][0]["image"]
    assert env["AIPLANE_CONNECTOR_IMAGE"].endswith(digest)
    assert (env["AIPLANE_STORE_SECRET"], env["AIPLANE_STORE_SECRET_KEY"]) == ("test-aiplane-postgresql", "url")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_variant_lets_a_model_name_its_own_endpoint_urls(variant: str) -> None:
    """The operator's endpoint-urls annotation is a test-only knob (docs/models.md): off unless its setting is."""
    for _, spec in pod_specs(objects(render(*VARIANTS[variant]))):
        for container in spec["containers"]:
            names = {item["name"] for item in container.get("env") or []}
            assert "AIPLANE_ENDPOINT_URLS_ANNOTATION" not in names, container["name"]


def test_models_without_an_image_run_in_aiplanes_image_unless_one_is_set() -> None:
    def operator_image_and_serving_image(*args: str) -> tuple[str, str]:
        (operator,) = [spec for name, spec in pod_specs(objects(render(*args))) if name.endswith("operator")]
        env = {item["name"]: item.get("value") for item in operator["containers"][0]["env"]}
        return operator["containers"][0]["image"], env["AIPLANE_SERVING_IMAGE"]

    image, serving = operator_image_and_serving_image()
    # The chart's default image is also the operator's own default outside the chart.
    assert serving == image == Config.serving_image
    image, serving = operator_image_and_serving_image("--set", "operator.servingImage=registry.example.com/serving:2")
    assert (image, serving) == (Config.serving_image, "registry.example.com/serving:2")


def test_audit_verify_runs_on_a_schedule_with_only_the_store() -> None:
    anchor = "12:" + "c" * 64
    docs = objects(
        render(
            "--set", "auditVerify.schedule=5 4 * * 1",
            "--set", "auditVerify.pushgateway=http://pushgateway.monitoring:9091",
            "--set", f"auditVerify.anchors[0]={anchor}",
        )
    )  # fmt: skip
    (cron,) = [doc for doc in docs if doc["kind"] == "CronJob"]
    assert cron["metadata"]["name"] == "test-aiplane-audit-verify"
    assert (cron["spec"]["schedule"], cron["spec"]["concurrencyPolicy"]) == ("5 4 * * 1", "Forbid")
    job = cron["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "test-aiplane-audit-verify"
    (container,) = pod["containers"]
    pushgateway = "--push-to=http://pushgateway.monitoring:9091"
    assert container["args"] == ["audit", "verify", pushgateway, f"--anchor={anchor}"]
    # The store's URL and nothing secret besides: no PII key, no token.
    secrets = [item["name"] for item in container["env"] if "valueFrom" in item]
    assert secrets == ["AIPLANE_DATABASE_URL"]
    # Its own egress: the store and the Pushgateway's port (DNS comes from the release-wide policy).
    policies = {doc["metadata"]["name"]: doc["spec"] for doc in docs if doc["kind"] == "NetworkPolicy"}
    egress = policies["test-aiplane-audit-verify-egress"]["egress"]
    assert [port["port"] for rule in egress for port in rule["ports"]] == [5432, 9091]
    store = policies["test-aiplane-postgresql-ingress"]["ingress"][0]["from"]
    assert {"audit-verify"} <= {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in store}
    # Its failure is an alert: the rule reads the Jobs this CronJob makes.
    rules = next(doc for doc in docs if doc["kind"] == "ConfigMap" and "aiplane.rules.yaml" in doc["data"])
    text = rules["data"]["aiplane.rules.yaml"]
    assert "AiplaneAuditVerifyJobFailed" in text
    # Jobs of a CronJob are named <cronjob>-<minute>: what the alert's job_name matcher expects.
    assert re.fullmatch(".+-audit-verify-[0-9]+", f"{cron['metadata']['name']}-29401440")
    assert 'job_name=~".+-audit-verify-[0-9]+"' in text


def test_audit_verify_can_be_turned_off() -> None:
    docs = objects(render("--set", "auditVerify.enabled=false"))
    assert not [doc for doc in docs if "audit-verify" in doc["metadata"]["name"]]


def test_operators_serve_metrics() -> None:
    docs = objects(render("--set", "operator.metricsPort=9191"))
    (operator,) = [spec for name, spec in pod_specs(docs) if name.endswith("operator")]
    assert "--metrics-port=9191" in operator["containers"][0]["args"]
    assert {"name": "metrics", "containerPort": 9191} in operator["containers"][0]["ports"]
    ingress = next(doc for doc in docs if doc["metadata"]["name"] == "test-aiplane-metrics-ingress")["spec"]
    assert ingress["podSelector"]["matchExpressions"][0]["values"] == ["worker", "operator"]
    assert [port["port"] for port in ingress["ingress"][0]["ports"]] == [9090, 9191]


def test_kafka_consumers_serve_metrics_where_prometheus_may_scrape_them() -> None:
    docs = objects(
        render("--set", "connectors.metricsPort=9393", "--set", "metrics.scraperNamespaceSelector.team=monitoring")
    )
    # The operator gives consumer Deployments this port (operators/connector/config.py reads these).
    env = _operator_env(docs)
    assert (env["AIPLANE_CONNECTOR_METRICS_PORT"], env["AIPLANE_CONNECTOR_METRICS_ANNOTATIONS"]) == ("9393", "true")
    policy = next(d for d in docs if d["metadata"]["name"] == "test-aiplane-kafka-source")["spec"]
    assert policy["ingress"] == [
        {
            "ports": [{"protocol": "TCP", "port": 9393}],
            "from": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}],
        }
    ]
    proc = helm("template", "t", str(CHART), *TRY_OUT, "--set", "connectors.metricsPort=0", check=False)
    assert proc.returncode != 0
    assert "/connectors/metricsPort" in proc.stderr, proc.stderr


def _operator_env(docs: Sequence[dict[str, Any]]) -> dict[str, str | None]:
    (operator,) = [spec for name, spec in pod_specs(docs) if name.endswith("operator")]
    return {item["name"]: item.get("value") for item in operator["containers"][0]["env"]}


@pytest.mark.parametrize("existing", ["", "my-pii-key"])
def test_kafka_consumers_are_governed_with_a_read_only_account_and_the_pii_key(existing: str) -> None:
    docs = objects(render("--set", f"pii.existingSecret.name={existing}", "--set", "pii.existingSecret.key=k"))
    env = _operator_env(docs)
    # The operator runs consumers `aiplane kafka-source --from-cluster` under this account, with the key the
    # gateway and workers use, and the store's Secret they use.
    assert env["AIPLANE_CONNECTOR_SERVICE_ACCOUNT"] == "test-aiplane-kafka-source"
    assert (env["AIPLANE_PII_SECRET"], env["AIPLANE_PII_SECRET_KEY"]) == (
        (existing, "k") if existing else ("test-aiplane-pii", "key")
    )
    assert (env["AIPLANE_STORE_SECRET"], env["AIPLANE_STORE_SECRET_KEY"]) == ("test-aiplane-postgresql", "url")
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"].endswith("kafka-source")]
    assert account["metadata"]["namespace"] == "aiplane"
    assert account["automountServiceAccountToken"] is True
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "test-aiplane-kafka-source"]
    assert role["metadata"]["namespace"] == "aiplane"
    # What the watches list; no Secrets (Kafka credentials are mounted files, the store URL and the key env refs).
    assert role["rules"] == [
        {
            "apiGroups": ["aiplane.io"],
            "resources": ["workflows", "models", "connectors", "policies"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    (binding,) = [
        d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "test-aiplane-kafka-source"
    ]
    assert binding["roleRef"]["name"] == "test-aiplane-kafka-source"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "test-aiplane-kafka-source", "namespace": "aiplane"}
    ]


def test_kafka_consumers_can_bring_their_own_account_or_run_ungoverned() -> None:
    own = objects(
        render("--set", "connectors.serviceAccount.create=false", "--set", "connectors.serviceAccount.name=intake")
    )
    assert _operator_env(own)["AIPLANE_CONNECTOR_SERVICE_ACCOUNT"] == "intake"
    assert not [
        d
        for d in own
        if d["kind"] == "ServiceAccount" and d["metadata"]["name"] in {"intake", "test-aiplane-kafka-source"}
    ]
    (binding,) = [d for d in own if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "test-aiplane-kafka-source"]
    assert binding["subjects"][0]["name"] == "intake"

    plain = objects(render("--set", "connectors.governed=false"))
    env = _operator_env(plain)
    assert not {"AIPLANE_CONNECTOR_SERVICE_ACCOUNT", "AIPLANE_PII_SECRET", "AIPLANE_PII_SECRET_KEY"} & set(env)
    assert not [d for d in plain if "kafka-source" in d["metadata"]["name"] and d["kind"] != "NetworkPolicy"]
    policy = next(d for d in plain if d["metadata"]["name"] == "test-aiplane-kafka-source")["spec"]
    # Ungoverned consumers never call the Kubernetes API.
    assert [rule["ports"][0]["port"] for rule in policy["egress"]] == [53, 5432, 9092]

    proc = helm("template", "t", str(CHART), *TRY_OUT, "--set", "connectors.serviceAccount.create=false", check=False)
    assert proc.returncode != 0
    assert "/connectors/serviceAccount/name" in proc.stderr, proc.stderr


def test_kafka_consumer_pods_get_a_network_policy_of_their_own() -> None:
    docs = objects(render("--set", "kafka.cidrs[0]=10.1.0.0/16", "--set", "operator.apiServer.cidrs[0]=10.0.0.1/32"))
    policies = {doc["metadata"]["name"]: doc["spec"] for doc in docs if doc["kind"] == "NetworkPolicy"}
    policy = policies["test-aiplane-kafka-source"]
    # The labels operators/connector/builders.py gives consumer pods (they carry none of the release's).
    labels = builders.labels("intake")
    assert _selects(policy["podSelector"]["matchLabels"], labels)
    assert not _selects(policies["test-aiplane-default-deny"]["podSelector"]["matchLabels"], labels)
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    # Only Prometheus calls them: their /metrics (the gateway's and workers' scrape allow, from any namespace).
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": 9090}], "from": [{"namespaceSelector": {}}]}]
    dns, store, kafka, api = policy["egress"]
    assert {port["port"] for port in dns["ports"]} == {53}
    assert store["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "postgresql"
    assert (kafka["ports"], kafka["to"]) == (
        [{"protocol": "TCP", "port": 9092}],
        [{"ipBlock": {"cidr": "10.1.0.0/16"}}],
    )
    assert [port["port"] for port in api["ports"]] == [443, 6443]
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    # The bundled store lets them in.
    peers = policies["test-aiplane-postgresql-ingress"]["ingress"][0]["from"]
    assert any(_selects(peer["podSelector"]["matchLabels"], labels) for peer in peers)
