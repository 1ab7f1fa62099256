"""The Workflow operator on the real test cluster: what the schema cannot check becomes Valid=False naming the step
and the problem; a valid Workflow gets Valid=True and the version the engine runs."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from crds import checks
from crds.workflow import WorkflowSpec
from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually
from tests.operators.conftest import Operator
from tests.operators.kube import apply, condition, get


def workflow(name: str, *steps: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {"steps": list(steps), **spec},
    }


def rules(name: str, **block: Any) -> dict[str, Any]:
    return {"name": name, "type": "rules", "rules": block}


def model_call(name: str, model: str) -> dict[str, Any]:
    return {"name": name, "type": "model", "model": {"name": model, "input": {"text": "input.text"}}}


def cpu_model(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {"bento": "service:Svc", "version": "1.0.0", "resources": {"cpu": "100m", "memory": "128Mi"}},
    }


def workflow_named(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    found = get(cluster, namespace, "workflow", name)
    found.setdefault("status", {})
    return found


def valid_condition(cluster: Cluster, namespace: str, name: str, status: str) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        found = workflow_named(cluster, namespace, name)
        valid = condition(found, "Valid")
        assert valid["status"] == status, valid
        assert found["status"]["observedGeneration"] == found["metadata"]["generation"]
        return found

    result: dict[str, Any] = assert_eventually(check, timeout=60, message=f"Workflow {name} Valid={status}")
    return result


@pytest.mark.parametrize(
    "case",
    [
        (
            workflow("loops", rules("a", set={"x": "1"}), rules("b", default="a")),
            "Cycle",
            "step 'b' rules.default leads back to 'a', a cycle (a -> b -> a)",
        ),
        (
            workflow("bad-cel", rules("decide", set={"tier": "input.amount >"})),
            "CelCompileError",
            "step 'decide' rules.set.tier: cannot compile CEL expression 'input.amount >'",
        ),
        (
            workflow("no-model", model_call("extract", "missing-model")),
            "ModelNotFound",
            "step 'extract' calls Model 'missing-model', which does not exist in namespace",
        ),
        (
            workflow("no-connector", {"name": "out", "type": "connector", "connector": {"name": "missing-sink"}}),
            "ConnectorNotFound",
            "step 'out' calls Connector 'missing-sink', which does not exist in namespace",
        ),
    ],
    ids=["cycle", "bad-cel", "unknown-model", "unknown-connector"],
)
def test_an_invalid_workflow_is_valid_false_naming_the_step_and_the_problem(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator, case: tuple[dict[str, Any], str, str]
) -> None:
    manifest, reason, message = case
    apply(crds_installed, k8s_namespace, manifest)
    found = valid_condition(crds_installed, k8s_namespace, manifest["metadata"]["name"], "False")
    valid = condition(found, "Valid")
    assert valid["reason"] == reason
    assert message in valid["message"]
    assert condition(found, "Ready")["status"] == "False"
    assert "version" not in found["status"] or found["status"]["version"] is None


def test_an_unknown_step_is_refused_by_the_apiserver_itself(crds_installed: Cluster, k8s_namespace: str) -> None:
    manifest = workflow("dangling", rules("a", default="nowhere"))
    refused = crds_installed.kubectl(
        "apply", "-n", k8s_namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False
    )
    assert refused.returncode != 0
    assert "every step's rules.default must name a step of this workflow" in refused.stderr


def test_a_valid_workflow_gets_its_version_and_a_new_spec_a_new_version(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator
) -> None:
    cluster = crds_installed
    manifest = workflow("triage", model_call("extract", "extractor"), rules("decide", set={"big": "input.n > 5"}))
    apply(cluster, k8s_namespace, manifest)
    # The Model does not exist yet: invalid, and valid as soon as it is created, with no change to the Workflow.
    missing = valid_condition(cluster, k8s_namespace, "triage", "False")
    assert condition(missing, "Valid")["reason"] == "ModelNotFound"
    apply(cluster, k8s_namespace, cpu_model("extractor"))
    found = valid_condition(cluster, k8s_namespace, "triage", "True")
    first = checks.version_of(WorkflowSpec.model_validate(manifest["spec"]))
    assert found["status"]["version"] == first
    assert condition(found, "Valid")["message"] == f"version {first}"

    def ready() -> None:
        assert condition(workflow_named(cluster, k8s_namespace, "triage"), "Ready")["status"] == "True"

    # Ready follows the Model's readiness (its pod runs on a kwok node).
    assert_eventually(ready, timeout=90, message="Workflow Ready once its Model is")
    printed = cluster.kubectl("get", "aiw", "triage", "-n", k8s_namespace).stdout.splitlines()[1].split()
    assert printed[:4] == ["triage", first, "True", "True"]

    manifest["spec"]["steps"][1]["rules"]["set"]["big"] = "input.n > 50"
    apply(cluster, k8s_namespace, manifest)

    def new_version() -> None:
        status = workflow_named(cluster, k8s_namespace, "triage")["status"]
        assert status["version"] not in (None, first)
        assert status["observedGeneration"] == 2

    assert_eventually(new_version, timeout=60)

    # Broken afterwards: Valid=False, and the last valid version stays what new tasks run.
    second = workflow_named(cluster, k8s_namespace, "triage")["status"]["version"]
    manifest["spec"]["steps"][1]["rules"]["set"]["big"] = "input.n >"
    apply(cluster, k8s_namespace, manifest)

    def broken() -> None:
        found = workflow_named(cluster, k8s_namespace, "triage")
        valid = condition(found, "Valid")
        assert (valid["status"], valid["reason"]) == ("False", "CelCompileError"), valid
        assert found["status"]["version"] == second
        assert f"new tasks still run version {second}" in valid["message"]

    assert_eventually(broken, timeout=60)
