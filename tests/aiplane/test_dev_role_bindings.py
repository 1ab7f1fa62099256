"""``aiplane dev``'s gateway grants the roles its Policy files bind (``access.roles``): an OIDC token whose group a
Policy file binds to approver approves; the file edited to drop the binding, the same token is refused again.
Tokens are verified against a real JWKS HTTP server; the stack, its file watch and its gateway are `aiplane dev`'s
(``DevStack.gateway`` is what ``aiplane dev`` serves)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from aiplane import manifests
from aiplane.dev import DEV_TENANT, DevStack
from api import create_api_key
from tests.api.conftest import auth, in_state, wait_task
from tests.fixtures.oidc import JwksServer, Signer, verifier
from tests.fixtures.polling import assert_eventually

NOWHERE = "01JZZZZZZZZZZZZZZZZZZZZZZZ"  # a well-formed approval id no approval has

WORKFLOW = {
    "apiVersion": "aiplane.io/v1alpha1",
    "kind": "Workflow",
    "metadata": {"name": "gated", "labels": {"team": "claims"}},
    "spec": {"steps": [{"name": "review", "type": "approval", "approval": {"approvers": {"roles": ["approver"]}}}]},
}


def _policy(roles: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Policy",
        "metadata": {"name": "claims-access"},
        "spec": {"selector": {"matchLabels": {"team": "claims"}}, "access": {"tenants": [DEV_TENANT], "roles": roles}},
    }


def _write(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")  # a temporary file and a rename, as editors save
    tmp.write_text(yaml.safe_dump(document))
    tmp.replace(path)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[DevStack]:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "workflow.yaml").write_text(yaml.safe_dump(WORKFLOW))
    _write(folder / "policy.yaml", _policy([{"role": "auditor", "subjects": ["claims-leads"]}]))
    dev = DevStack(manifests_dir=folder, data_dir=tmp_path / "data", resources=manifests.load([folder]))
    try:
        dev.start()
        assert dev.policy_watch is not None
        dev.policy_watch.interval = 0.05  # every second in `aiplane dev`
        yield dev
    finally:
        dev.stop()


def test_a_policy_file_binding_lets_a_group_approve_until_the_file_drops_it(
    stack: DevStack, jwks: JwksServer, rsa_key: Signer
) -> None:
    engine = stack.engine
    assert engine is not None
    key = create_api_key(engine, DEV_TENANT, "dev", ["submitter", "auditor"])
    lead = rsa_key.token(sub="lee@example.test", tenant=DEV_TENANT, roles=[], groups=["claims-leads"])
    policy = stack.manifests_dir / "policy.yaml"
    with engine.worker(), TestClient(stack.gateway(verifier(jwks))) as client:

        def pending() -> str:
            task = client.post("/v1/tasks", json={"workflow": {"name": "gated"}}, headers=auth(key)).json()
            wait_task(client, key, task["id"], in_state("waiting"))
            [approval] = client.get(f"/v1/approvals?taskId={task['id']}", headers=auth(key)).json()["items"]
            approval_id: str = approval["id"]
            return approval_id

        def approve(approval_id: str, status: int) -> None:
            response = client.post(f"/v1/approvals/{approval_id}/approve", headers=auth(lead))
            assert response.status_code == status, response.text

        first = pending()
        # The group is bound to auditor only: it reads, and may not approve.
        assert client.get(f"/v1/approvals/{first}", headers=auth(lead)).status_code == 200
        approve(first, 403)

        _write(policy, _policy([{"role": "approver", "subjects": ["claims-leads"]}]))
        assert_eventually(lambda: approve(first, 200), timeout=10, interval=0.05)

        second = pending()
        _write(policy, _policy([{"role": "auditor", "subjects": ["claims-leads"]}]))
        # Polled on an approval that does not exist (the role is checked first: 403 without it, else 404), so no
        # real approval is decided while the edit is on its way.
        assert_eventually(lambda: approve(NOWHERE, 403), timeout=10, interval=0.05)
        approve(second, 403)
        assert client.get(f"/v1/approvals/{second}", headers=auth(key)).json()["state"] == "pending"
