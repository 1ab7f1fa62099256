"""The gateway's own Policy enforcement counts in aiplane_policy_decisions_total: a submitter refused the approval
of their own task (separation of duties)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from engine import Worker
from tests.api.conftest import Keys, assert_problem, auth
from tests.api.test_access_sod import _gated, _govern, _policy, sam

__all__ = ["sam"]  # the fixture, used by name


def _denied() -> float:
    labels = {"check": "separation_of_duties", "decision": "deny"}
    return REGISTRY.get_sample_value("aiplane_policy_decisions_total", labels) or 0.0


def test_a_refused_self_approval_is_a_deny(client: TestClient, keys: Keys, sam: str, worker: Worker) -> None:
    _govern(client, [_policy(True)])
    _, approval_id = _gated(client, sam)
    before = _denied()
    assert_problem(client.post(f"/v1/approvals/{approval_id}/approve", headers=auth(sam)), 403, "separation-of-duties")
    assert _denied() - before == 1
    assert client.post(f"/v1/approvals/{approval_id}/approve", headers=auth(keys.bob)).status_code == 200
    assert _denied() - before == 1
