"""The generated CRDs on a real kube-apiserver: examples accepted, bad manifests refused naming the field,
`kubectl explain` and `kubectl get` show what the models declare."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from crds import RESOURCES
from tests.crds.cases import BAD_CASES, EXAMPLES, BadCase
from tests.fixtures.cluster import Cluster

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


@pytest.fixture(scope="module")
def crds_installed(cluster: Cluster) -> Cluster:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    for resource in RESOURCES:
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{resource.crd_name()}")
    return cluster


@pytest.fixture(scope="module")
def scratch_namespace(crds_installed: Cluster) -> Iterator[str]:
    """One namespace for the dry runs: nothing is stored in it, so tests cannot disturb each other."""
    name = crds_installed.create_namespace("crd-dry-run")
    yield name
    crds_installed.delete_namespace(name)


def test_examples_are_accepted_and_listed(crds_installed: Cluster, k8s_namespace: str) -> None:
    cluster = crds_installed
    cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-n", k8s_namespace, "-f", str(EXAMPLES))
    cluster.kubectl("apply", "--validate=strict", "-n", k8s_namespace, "-f", str(EXAMPLES))

    listing = cluster.kubectl("get", "aim", "-n", k8s_namespace).stdout.splitlines()
    assert listing[0].split() == ["NAME", "VERSION", "STABLE", "CANARY", "WEIGHT", "READY", "AGE"]
    assert listing[1].split()[:2] == ["claims-extractor", "1.0.0"]

    everything = cluster.kubectl("get", "aiplane", "-n", k8s_namespace, "-o", "name").stdout.split()
    assert sorted(everything) == sorted(
        [
            "model.aiplane.io/claims-extractor",
            "model.aiplane.io/claims-planner",
            "workflow.aiplane.io/claims-triage",
            "workflow.aiplane.io/claims-completion",
            "connector.aiplane.io/claims-intake",
            "connector.aiplane.io/claims-decisions",
            "connector.aiplane.io/claimant-portal",
            "policy.aiplane.io/claims-governance",
        ]
    )


def test_the_apiserver_applies_the_models_defaults(crds_installed: Cluster, k8s_namespace: str) -> None:
    cluster = crds_installed
    cluster.kubectl("apply", "-n", k8s_namespace, "-f", str(EXAMPLES / "workflow.yaml"))
    stored = yaml.safe_load(cluster.kubectl("get", "aiw", "claims-triage", "-n", k8s_namespace, "-o", "yaml").stdout)
    decide = stored["spec"]["steps"][1]
    assert decide["timeout"] == "30s"
    assert decide["end"] is False


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.id)
def test_bad_manifest_is_refused(crds_installed: Cluster, scratch_namespace: str, case: BadCase) -> None:
    args = ["create", "--dry-run=server", "-n", scratch_namespace, "-f", "-"]
    if case.strict:
        args.insert(1, "--validate=strict")
    refused = crds_installed.kubectl(*args, input=yaml.safe_dump(case.manifest()), check=False)
    assert refused.returncode != 0, f"{case.id} was accepted"
    assert case.field in refused.stderr
    assert case.message in refused.stderr


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("model.spec.canary", "A rollout of the version it names next to spec.version; omit when none runs."),
        ("model.spec.canary.analysis.maxDrift", "population stability index"),
        ("model.spec.resources.gpu.count", "GPUs per replica"),
        ("model.spec.rollout", "How a change of spec.version rolls out"),
        ("workflow.spec.steps.retry.backoff", "Growth factor of the delay per attempt"),
        ("connector.spec.kafkaSource.idempotencyKey", "CEL over the message"),
        ("policy.spec.pii.action", "tokenize is reversible"),
    ],
)
def test_kubectl_explain_shows_descriptions(crds_installed: Cluster, field: str, expected: str) -> None:
    explained = crds_installed.kubectl("explain", field).stdout
    assert expected in " ".join(explained.split())
