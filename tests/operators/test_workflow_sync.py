"""Workflows from ``kubectl apply`` to the engine: the operator validates and versions them, ``KubeWorkflowSync``
registers the valid ones, new tasks run the newest version and a task that started earlier keeps its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiplane.kubeworkflows import KubeWorkflowSync
from engine import Engine, Task, WorkerConfig, WorkflowNotFoundError
from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually
from tests.operators.conftest import Operator
from tests.operators.kube import apply, condition, get

TENANT = "acme"


def held(tier: str) -> dict[str, Any]:
    """A workflow that waits for an approval, then decides ``vars.tier``."""
    return {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "held"},
        "spec": {
            "steps": [
                {"name": "hold", "type": "approval", "approval": {}},
                {"name": "decide", "type": "rules", "rules": {"set": {"tier": f"'{tier}'"}}},
            ]
        },
    }


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(f"sqlite:///{tmp_path / 'engine.db'}", data_dir=tmp_path / "data") as engine:
        yield engine


def published(cluster: Cluster, namespace: str, engine: Engine, not_: str | None = None) -> str:
    """The version the operator published, once the engine's head is that version."""

    def check() -> str:
        status = get(cluster, namespace, "workflow", "held").get("status") or {}
        version = status.get("version")
        assert version is not None, status
        assert version != not_, status
        assert engine.workflow("held")[0] == version
        return str(version)

    result: str = assert_eventually(check, timeout=60, retry_on=(AssertionError, WorkflowNotFoundError))
    return result


def approve_and_finish(engine: Engine, task: Task) -> Task:
    def pending() -> str:
        (approval,) = engine.approvals(TENANT, task_id=task.id).items
        return approval.id

    approval = assert_eventually(pending, timeout=20, retry_on=(AssertionError, ValueError))
    engine.approve(approval, "alice", tenant=TENANT, roles={"approver"})
    return engine.wait(TENANT, task.id, 20)


def test_a_spec_change_is_a_new_version_for_new_tasks_while_a_started_task_keeps_its_own(
    crds_installed: Cluster, k8s_namespace: str, operator: Operator, engine: Engine
) -> None:
    cluster = crds_installed
    sync = KubeWorkflowSync(cluster.api_client(), k8s_namespace, engine).start()
    try:
        apply(cluster, k8s_namespace, held("one"))
        first = published(cluster, k8s_namespace, engine)
        started = engine.submit(TENANT, "held", {})
        assert started.workflow_version == first

        apply(cluster, k8s_namespace, held("two"))
        second = published(cluster, k8s_namespace, engine, not_=first)
        later = engine.submit(TENANT, "held", {})
        assert later.workflow_version == second

        # An invalid change publishes nothing: new tasks stay on the last valid version.
        broken = held("three")
        broken["spec"]["steps"][1]["rules"]["set"]["tier"] = "'three' +"
        apply(cluster, k8s_namespace, broken)
        assert_eventually(
            lambda: condition(get(cluster, k8s_namespace, "workflow", "held"), "Valid")["status"] == "False",
            timeout=60,
        )
        assert engine.workflow("held")[0] == second

        with engine.worker(WorkerConfig(poll_interval=0.02)):
            done_first = approve_and_finish(engine, started)
            done_later = approve_and_finish(engine, later)
        assert (done_first.workflow_version, done_first.vars) == (first, {"tier": "one"})
        assert (done_later.workflow_version, done_later.vars) == (second, {"tier": "two"})
    finally:
        sync.stop()


def test_only_a_spec_the_operator_found_valid_as_it_is_now_is_published() -> None:
    from aiplane.kubeworkflows import publishable
    from crds import checks
    from crds.workflow import WorkflowSpec

    body = held("one")
    version = checks.version_of(WorkflowSpec.model_validate(body["spec"]))
    valid = {"type": "Valid", "status": "True"}
    body["metadata"]["generation"] = 2
    body["status"] = {"observedGeneration": 2, "version": version, "conditions": [valid]}
    assert publishable(body) is not None
    assert publishable({**body, "status": {**body["status"], "observedGeneration": 1}}) is None
    assert publishable({**body, "status": {**body["status"], "conditions": [{**valid, "status": "False"}]}}) is None
    # Invalid now, the last valid version still in status: that version is not this spec's.
    changed = held("two")
    changed["metadata"]["generation"] = 2
    assert publishable({**changed, "status": body["status"]}) is None
