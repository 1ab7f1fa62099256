"""Policies' ``access.roles`` through the gateway: a binding grants its role to an OIDC subject or group, or to an
API key's principal, in its Policy's tenants, from the next request after the Policy changes (tokens and keys
already verified included), and taking the Policy away takes the role away. Tokens are signed here and verified
against a real JWKS HTTP server (tests/api/test_access_oidc.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import create_app
from api.auth import follow_policies
from crds.policy import Policy
from engine import Engine, Worker
from policies.sources import PolicySet
from tests.api.conftest import SETTINGS, Keys, assert_problem, auth, in_state, wait_task
from tests.fixtures.oidc import JwksServer, Signer, verifier


def binding(name: str, role: str, subjects: list[str], tenants: list[str] | None = None) -> Policy:
    access: dict[str, Any] = {"roles": [{"role": role, "subjects": subjects}]}
    if tenants is not None:
        access["tenants"] = tenants
    return Policy.model_validate({"metadata": {"name": name, "generation": 1}, "spec": {"access": access}})


@pytest.fixture
def policies() -> PolicySet:
    return PolicySet()


@pytest.fixture
def client(engine: Engine, jwks: JwksServer, policies: PolicySet) -> Iterator[TestClient]:
    app = create_app(engine, SETTINGS, oidc=verifier(jwks))
    follow_policies(app.state.gateway, policies, {})
    with TestClient(app) as test_client:
        yield test_client


def _pending(client: TestClient, key: str) -> str:
    """A task of the ``gated`` workflow waiting at its approval step; its approval's id."""
    response = client.post("/v1/tasks", json={"workflow": {"name": "gated"}}, headers=auth(key))
    assert response.status_code == 202, response.text
    task_id = response.json()["id"]
    wait_task(client, key, task_id, in_state("waiting"))
    [approval] = client.get(f"/v1/approvals?taskId={task_id}", headers=auth(key)).json()["items"]
    approval_id: str = approval["id"]
    return approval_id


def test_a_policy_binding_a_group_to_approver_lets_its_token_approve_until_it_is_removed(
    client: TestClient, policies: PolicySet, keys: Keys, rsa_key: Signer, worker: Worker
) -> None:
    lead = rsa_key.token(sub="lee@acme.example", roles=[], groups=["claims-leads"])
    first = _pending(client, keys.alice)
    problem = assert_problem(client.post(f"/v1/approvals/{first}/approve", headers=auth(lead)), 403, "forbidden")
    assert "approver" in problem["detail"]

    policies.put(binding("leads-approve", "approver", ["claims-leads"], tenants=["acme"]))
    # The same token, verified and cached before the Policy came: the grant applies to the next request.
    approved = client.post(f"/v1/approvals/{first}/approve", headers=auth(lead))
    assert approved.status_code == 200, approved.text
    assert approved.json()["decisions"][0]["approver"] == "lee@acme.example"

    second = _pending(client, keys.alice)
    policies.remove(("default", "leads-approve"))
    assert_problem(client.post(f"/v1/approvals/{second}/approve", headers=auth(lead)), 403, "forbidden")
    assert client.get(f"/v1/approvals/{second}", headers=auth(keys.alice)).json()["state"] == "pending"


def test_a_binding_grants_only_in_its_policys_tenants_and_never_across_tenants(
    client: TestClient, policies: PolicySet, keys: Keys, rsa_key: Signer, worker: Worker
) -> None:
    approval = _pending(client, keys.alice)
    # A binding for globex: an acme member of the group gains nothing in acme.
    policies.put(binding("globex-leads", "approver", ["claims-leads"], tenants=["globex"]))
    acme_lead = rsa_key.token(sub="lee@acme.example", roles=[], groups=["claims-leads"])
    assert_problem(client.post(f"/v1/approvals/{approval}/approve", headers=auth(acme_lead)), 403, "forbidden")
    # A globex member of the group is an approver in globex, where acme's approval does not exist.
    globex_lead = rsa_key.token(sub="gil@globex.example", tenant="globex", roles=[], groups=["claims-leads"])
    assert_problem(
        client.post(f"/v1/approvals/{approval}/approve", headers=auth(globex_lead)), 404, "approval-not-found"
    )
    # A binding that names no tenant grants in every tenant, each in its own: still nothing crosses over.
    policies.put(binding("every-tenant", "approver", ["claims-leads"]))
    assert_problem(
        client.post(f"/v1/approvals/{approval}/approve", headers=auth(globex_lead)), 404, "approval-not-found"
    )
    assert client.post(f"/v1/approvals/{approval}/approve", headers=auth(acme_lead)).status_code == 200


def test_a_binding_names_an_api_keys_principal_and_adds_to_its_roles(
    client: TestClient, policies: PolicySet, keys: Keys, worker: Worker
) -> None:
    approval = _pending(client, keys.alice)
    # carol's key is an auditor's: she reads, and may not approve.
    assert client.get(f"/v1/approvals/{approval}", headers=auth(keys.carol)).status_code == 200
    assert_problem(client.post(f"/v1/approvals/{approval}/approve", headers=auth(keys.carol)), 403, "forbidden")
    policies.put(binding("carol-approves", "approver", ["carol"], tenants=["acme"]))
    assert client.post(f"/v1/approvals/{approval}/approve", headers=auth(keys.carol)).status_code == 200
    # Added to the key's roles, not instead of them: an admin's route refuses her naming both.
    refused = assert_problem(client.post("/v1/erasures", json={"subject": "x"}, headers=auth(keys.carol)), 403)
    assert "the API key has ['approver', 'auditor']" in refused["detail"], refused


def test_a_bound_submitter_submits_through_the_fast_path(
    client: TestClient, policies: PolicySet, rsa_key: Signer
) -> None:
    reader = rsa_key.token(roles=["auditor"], groups=["claims-team"])
    body = {"workflow": {"name": "echo"}, "input": {"claimId": "c-1"}}
    assert_problem(client.post("/v1/tasks", json=body, headers=auth(reader)), 403, "forbidden")
    policies.put(binding("team-submits", "submitter", ["claims-team"]))
    assert client.post("/v1/tasks", json=body, headers=auth(reader)).status_code == 202
    assert client.post("/v1/tasks?mode=async", json=body, headers=auth(reader)).status_code == 202
