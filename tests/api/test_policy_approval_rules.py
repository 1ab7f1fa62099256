"""A Policy's approval rule through the gateway, as ``aiplane dev`` serves it (``DevStack.gateway``, a Policy file):
a task whose input meets the rule's CEL waits for an approval with the rule's quorum and roles (admins: an
approver who is not one is refused by the rule, past the route's own role check), an admin's second vote does not
count twice, and only the second distinct approver
lets the task go on. A task the rule does not catch runs straight through. (Separation of duties is
tests/api/test_access_sod.py's: ``aiplane dev``'s gateway leaves it out, its one key submitting and approving.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from aiplane import manifests
from aiplane.dev import DevStack
from api import create_api_key
from tests.api.conftest import assert_problem, auth, in_state, wait_task
from tests.engine.conftest import fast_worker

TENANT = "acme"
WORKFLOW = {
    "apiVersion": "aiplane.io/v1alpha1",
    "kind": "Workflow",
    "metadata": {"name": "payout", "labels": {"team": "claims"}},
    "spec": {"steps": [{"name": "decide", "type": "rules", "rules": {"set": {"paid": "input.amount"}}}]},
}
POLICY = {
    "apiVersion": "aiplane.io/v1alpha1",
    "kind": "Policy",
    "metadata": {"name": "large-payouts"},
    "spec": {
        "selector": {"matchLabels": {"team": "claims"}},
        "approvals": [{"name": "large", "when": "input.amount > 10000", "roles": ["admin"], "quorum": 2}],
    },
}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[DevStack]:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "workflow.yaml").write_text(yaml.safe_dump(WORKFLOW))
    (folder / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    dev = DevStack(manifests_dir=folder, data_dir=tmp_path / "data", resources=manifests.load([folder]))
    try:
        dev.start()
        yield dev
    finally:
        dev.stop()


def test_a_policy_rule_gates_large_payouts_with_its_roles_and_quorum(stack: DevStack) -> None:
    engine = stack.engine
    assert engine is not None
    sam = create_api_key(engine, TENANT, "sam", ["submitter"])
    sue = create_api_key(engine, TENANT, "sue", ["submitter"])
    amy = create_api_key(engine, TENANT, "amy", ["approver"])
    ann = create_api_key(engine, TENANT, "ann", ["approver", "admin"])
    bob = create_api_key(engine, TENANT, "bob", ["admin"])
    with fast_worker(engine), TestClient(stack.gateway()) as client:
        small = client.post(
            "/v1/tasks", json={"workflow": {"name": "payout"}, "input": {"amount": 50}}, headers=auth(sam)
        )
        assert small.status_code == 202, small.text
        assert wait_task(client, sam, small.json()["id"], in_state("succeeded"))["result"]["vars"] == {"paid": 50}

        large = client.post(
            "/v1/tasks", json={"workflow": {"name": "payout"}, "input": {"amount": 12000}}, headers=auth(sam)
        )
        task_id = large.json()["id"]
        wait_task(client, sam, task_id, in_state("waiting"))
        [approval] = client.get(f"/v1/approvals?taskId={task_id}&state=pending", headers=auth(ann)).json()["items"]
        assert (approval["quorum"], approval["roles"]) == (2, ["admin"]), approval
        decide = f"/v1/approvals/{approval['id']}/approve"

        for outsider in (sam, sue):  # no approver role: the route refuses
            assert_problem(client.post(decide, json={"reason": "ok"}, headers=auth(outsider)), 403, "forbidden")
        refused = client.post(decide, json={"reason": "ok"}, headers=auth(amy))  # an approver, not an admin
        assert refused.status_code == 403, refused.text
        assert "admin" in refused.text
        first = client.post(decide, json={"reason": "checked the invoice"}, headers=auth(ann))
        assert first.status_code == 200, first.text
        assert first.json()["state"] == "pending"  # one of two
        again = client.post(decide, json={"reason": "twice"}, headers=auth(ann))
        assert again.status_code in (403, 409), again.text  # one vote per approver
        assert wait_task(client, sam, task_id, in_state("waiting"))

        second = client.post(decide, json={"reason": "second pair of eyes"}, headers=auth(bob))
        assert second.status_code == 200, second.text
        assert second.json()["state"] == "approved"
        assert wait_task(client, sam, task_id, in_state("succeeded"))["result"]["vars"] == {"paid": 12000}
