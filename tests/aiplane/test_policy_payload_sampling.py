"""A Workflow Policy's ``payloadLogging.sampleRate`` reaches the engine as ``aiplane dev`` wires it: the Policy
selects workflows by label, its rate samples their tasks' step payloads into the store, and a workflow no Policy
selects keeps none. An edit of the rate applies to the next task without a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import TaskState
from tests.engine.conftest import fast_worker, wait_done
from tests.fixtures.devstack import dev_stack, write_manifest
from tests.fixtures.polling import assert_eventually

API = "aiplane.io/v1alpha1"


def workflow(name: str, labels: dict[str, str]) -> dict[str, Any]:
    steps = [{"name": "decide", "type": "rules", "rules": {"set": {"large": "input.amount > 1000.0"}}}]
    metadata = {"name": name, "labels": labels}
    return {"apiVersion": API, "kind": "Workflow", "metadata": metadata, "spec": {"steps": steps}}


def sampling(rate: float) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Policy",
        "metadata": {"name": "claims-payloads"},
        "spec": {"selector": {"matchLabels": {"team": "claims"}}, "payloadLogging": {"sampleRate": rate}},
    }


def test_a_workflow_policy_samples_its_workflows_payloads(tmp_path: Path) -> None:
    files = {
        "claims.yaml": workflow("claims", {"team": "claims"}),
        "quiet.yaml": workflow("quiet", {"team": "fraud"}),
        "policy.yaml": sampling(1.0),
    }
    with dev_stack(tmp_path, files) as (stack, engine):
        policy = stack.manifests_dir / "policy.yaml"
        with fast_worker(engine):
            claims = wait_done(engine, "acme", engine.submit("acme", "claims", {"amount": 1500.0}).id)
            quiet = wait_done(engine, "acme", engine.submit("acme", "quiet", {"amount": 1500.0}).id)
            assert claims.state == quiet.state == TaskState.SUCCEEDED
            [record] = engine.payload_logs.records(tenant="acme")
            assert (record["task_id"], record["step"]) == (claims.id, "decide")
            assert record["input"] == {"amount": 1500.0}
            assert engine.payload_logs.records(task_id=quiet.id) == []

            # Rate 0: the next claims task keeps nothing, with no restart.
            write_manifest(policy, sampling(0.0))

            def unsampled() -> None:
                task = wait_done(engine, "acme", engine.submit("acme", "claims", {"amount": 5.0}).id)
                assert engine.payload_logs.records(task_id=task.id) == []

            assert_eventually(unsampled, timeout=10)
