"""Tenant isolation (BOLA) on every route of the OpenAPI document: tenant B, with every role, against tenant A's
objects gets 404 (the same answer as for an id that does not exist, so not even existence leaks), and no route
answers with A's data. The walk fails on a route it does not know, so a new route must be classified here.

Chosen: 404, not 403. A 403 would tell B that the id exists in some other tenant.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import create_api_key, create_app
from engine import Engine, Worker
from tests.api.conftest import SETTINGS, Keys, Reply, Upstream, assert_problem, auth, in_state, wait_task
from tests.fixtures.oidc import ISSUER, JwksServer, Signer, verifier

# Routes that address one object of a tenant by id: B must get 404 with the object kind's problem type.
OBJECT_ROUTES = {
    ("get", "/v1/tasks/{taskId}"): "task-not-found",
    ("post", "/v1/tasks/{taskId}/cancel"): "task-not-found",
    ("post", "/v1/tasks/{taskId}/replay"): "task-not-found",
    ("get", "/v1/tasks/{taskId}/events"): "task-not-found",
    ("get", "/v1/tasks/{taskId}/trace"): "task-not-found",
    ("get", "/v1/tasks/{taskId}/lineage"): "task-not-found",
    ("get", "/v1/tasks/{taskId}/agent-decisions"): "task-not-found",
    ("get", "/v1/approvals/{approvalId}"): "approval-not-found",
    ("post", "/v1/approvals/{approvalId}/approve"): "approval-not-found",
    ("post", "/v1/approvals/{approvalId}/reject"): "approval-not-found",
}
# Routes that list or create within the caller's tenant (B sees only B's), or hold no tenant's objects at all
# (Models are shared resources of the cluster; health and metrics say nothing about tasks).
OTHER_ROUTES = {
    ("get", "/v1/tasks"),
    ("post", "/v1/tasks"),
    ("get", "/v1/approvals"),
    ("get", "/v1/dead-letters"),
    ("post", "/v1/erasures"),
    ("post", "/v1/detokenize"),
    ("post", "/v1/models/{name}/predict"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
}
BODIES: dict[tuple[str, str], Any] = {
    ("post", "/v1/tasks"): {"workflow": {"name": "echo"}, "input": {"claimId": "b-1"}},
    ("post", "/v1/tasks/{taskId}/cancel"): {"reason": "b was here"},
    ("post", "/v1/approvals/{approvalId}/approve"): {"reason": "b approves"},
    ("post", "/v1/approvals/{approvalId}/reject"): {"reason": "b rejects"},
    ("post", "/v1/models/{name}/predict"): {"claimId": "b-1"},
    # B's admin asks to erase the subject of A's tasks (their note holds SECRET): only B's tenant is searched.
    ("post", "/v1/erasures"): {"subject": "acme-private-7f3a", "fields": ["note"]},
    # B opens a value of its own; A's tasks by id are tried after the walk.
    ("post", "/v1/detokenize"): {"workflow": "gated", "value": {"note": "b"}, "reason": "b probes"},
}


SECRET = "acme-private-7f3a"  # in A's task inputs: must never reach B


class TenantA:
    """Acme's objects: a task waiting for approval, its approval, and a dead-lettered task."""

    def __init__(self, client: TestClient, keys: Keys, upstream: Upstream) -> None:
        upstream.script("/fragile", *[Reply(status=400, body={"error": "bad"})] * 3)
        headers = auth(keys.alice, **{"Idempotency-Key": "shared-key"})
        self.gated: str = client.post(
            "/v1/tasks", json={"workflow": {"name": "gated"}, "input": {"note": SECRET}}, headers=headers
        ).json()["id"]
        wait_task(client, keys.alice, self.gated, in_state("waiting"))
        self.approval: str = client.get(f"/v1/approvals?taskId={self.gated}", headers=auth(keys.bob)).json()["items"][
            0
        ]["id"]
        self.dead: str = client.post(
            "/v1/tasks", json={"workflow": {"name": "fragile"}, "input": {"note": SECRET}}, headers=auth(keys.alice)
        ).json()["id"]
        wait_task(client, keys.alice, self.dead, in_state("dead_lettered"))

    def ids(self) -> set[str]:
        return {self.gated, self.approval, self.dead}


@pytest.fixture
def gateway_client(engine: Engine, jwks: JwksServer, upstream: Upstream) -> Iterator[TestClient]:
    with TestClient(create_app(engine, SETTINGS, oidc=verifier(jwks))) as client:
        yield client


def _path(template: str, a: TenantA, task: str) -> str:
    return template.format(taskId=task, approvalId=a.approval, name="echo")


def _leaks(text: str, a: TenantA, path: str = "") -> set[str]:
    """A's ids (other than one B sent in the path, which a not-found problem names back), A's data, A's name."""
    found = {i for i in a.ids() if i in text and i not in path}
    return found | {s for s in (SECRET, "acme", "alice") if s in text}


@pytest.mark.parametrize("credential", ["api-key", "oidc"])
def test_tenant_b_gets_404_for_every_object_of_tenant_a(
    *,
    gateway_client: TestClient,
    engine: Engine,
    keys: Keys,
    ec_key: Signer,
    upstream: Upstream,
    worker: Worker,
    credential: str,
) -> None:
    client = gateway_client
    a = TenantA(client, keys, upstream)
    if credential == "api-key":
        b = create_api_key(engine, "globex", "mallory", ["submitter", "approver", "auditor", "admin"])
    else:
        b = ec_key.token(
            iss=ISSUER, tenant="globex", sub="mallory", roles=["submitter", "approver", "auditor", "admin"]
        )

    walked = set()
    for template, operations in client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        for method in operations:
            route = (method, template)
            walked.add(route)
            assert route in OBJECT_ROUTES or route in OTHER_ROUTES, f"classify {route} for the BOLA walk"
            # Each task route against both of A's tasks (waiting and dead-lettered: replay and cancel differ).
            for task in (a.gated, a.dead) if "{taskId}" in template else (a.gated,):
                path = _path(template, a, task)
                body = BODIES.get(route)
                response = client.request(method.upper(), path, headers=auth(b), json=body)
                where = f"{method.upper()} {path}"
                assert response.status_code < 500, (where, response.text)
                if route in OBJECT_ROUTES:
                    problem = assert_problem(response, 404, OBJECT_ROUTES[route])
                    assert "globex" not in json.dumps(problem)
                assert not _leaks(response.text, a, path), (where, response.text)
                # The same route with an id that exists nowhere answers alike (existence does not leak).
                if route in OBJECT_ROUTES:
                    nowhere = client.request(
                        method.upper(),
                        _path(template.replace("{taskId}", "0" * 26).replace("{approvalId}", "0" * 26), a, task),
                        headers=auth(b),
                        json=body,
                    )
                    assert _strip_ids(nowhere.json()) == _strip_ids(response.json())
    assert walked == set(OBJECT_ROUTES) | OTHER_ROUTES

    # Detokenizing A's task by id: not found, as for a task that exists nowhere.
    for task in (a.gated, "0" * 26):
        response = client.post("/v1/detokenize", json={"taskId": task, "reason": "b probes"}, headers=auth(b))
        assert_problem(response, 404, "task-not-found")
        assert not _leaks(response.text, a, task)

    # Lists filtered by A's ids come back empty rather than refused.
    for path in (f"/v1/approvals?taskId={a.gated}&state=all", "/v1/tasks?workflow=gated", "/v1/dead-letters"):
        response = client.get(path, headers=auth(b))
        assert response.status_code == 200, response.text
        assert not _leaks(response.text, a)
    # The same Idempotency-Key and body as A's request is B's own key: a new task, not A's stored answer.
    replay = client.post(
        "/v1/tasks", json={"workflow": {"name": "gated"}}, headers=auth(b, **{"Idempotency-Key": "shared-key"})
    )
    assert replay.status_code == 202
    assert "idempotent-replayed" not in replay.headers
    assert replay.json()["id"] not in a.ids()

    # Nothing B did changed A's objects.
    assert engine.get("acme", a.gated).state == "waiting"
    assert engine.get("acme", a.dead).state == "dead_lettered"
    assert engine.approval(a.approval, tenant="acme").state == "pending"


def _strip_ids(problem: dict[str, Any]) -> dict[str, Any]:
    """A problem without the request-specific parts (the path and the id it names)."""
    ulid = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
    return {k: ulid.sub("<id>", v) if isinstance(v, str) else v for k, v in problem.items() if k != "instance"}
