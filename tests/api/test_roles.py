"""Roles on every route of the OpenAPI document: a caller of the tenant whose roles lack the one a route needs gets
403 (problem+json), and a caller holding it, or admin, does not. What each route needs is read from the code, not
written here: the roles of the ``api.auth.require`` dependency its handler declares (``Reader``, ``Submitter``,
``Approver``, ``Admin``). The routes that decide in their body (predict calls ``authorize`` with ``SUBMITTERS``;
detokenize asks the workflow's PII Policy for its unmask roles) and the public ones are listed, and the walk fails
on a route it cannot classify, so a new route must say who may call it.

Callers are OIDC tokens, which may carry no role at all (an API key has at least one); the role check after
authentication is the same for both credentials.
"""

from __future__ import annotations

from collections.abc import Iterator, Set
from typing import Any

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from api import create_app
from api.auth import SUBMITTERS
from api.store import ROLES
from crds.policy import Policy
from engine import Engine
from policies.effective import Target
from policies.masking import WorkflowMasking
from policies.sources import PolicySet
from tests.api.conftest import PROBLEM, SETTINGS, Upstream, assert_problem, auth
from tests.fixtures.oidc import ISSUER, JwksServer, Signer, verifier
from tests.policies.test_pii_engine import KEYS

Route = tuple[str, str]

# Routes whose handler checks roles itself, with the roles it asks for.
IN_BODY: dict[Route, frozenset[str]] = {("post", "/v1/models/{name}/predict"): SUBMITTERS}
# Detokenize: the roles are the workflow's PII Policy's unmaskRoles (here: auditor, for workflow "echo").
UNMASK_ROLES = frozenset({"auditor"})
POLICY_ROLES: dict[Route, frozenset[str]] = {("post", "/v1/detokenize"): UNMASK_ROLES}
# No authentication at all: probes and Prometheus.
PUBLIC = {("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics")}
NOWHERE = "0" * 26  # an id that exists in no tenant: a caller past the role check gets 404, nothing changes
BODIES: dict[Route, Any] = {
    ("post", "/v1/tasks"): {"workflow": {"name": "echo"}, "input": {"claimId": "r-1"}},
    ("post", "/v1/tasks/{taskId}/cancel"): {"reason": "role walk"},
    ("post", "/v1/approvals/{approvalId}/approve"): {"reason": "role walk"},
    ("post", "/v1/approvals/{approvalId}/reject"): {"reason": "role walk"},
    ("post", "/v1/models/{name}/predict"): {"claimId": "r-1"},
    ("post", "/v1/erasures"): {"subject": "role-walk-subject"},
    ("post", "/v1/detokenize"): {"workflow": "echo", "value": {"note": "nothing masked"}, "reason": "role walk"},
}


def _required(dependant: Dependant) -> set[frozenset[str]]:
    """The role sets of every ``require(...)`` dependency in the tree (its closure's ``allowed``)."""
    found: set[frozenset[str]] = set()
    for dependency in dependant.dependencies:
        call: Any = dependency.call
        if getattr(call, "__qualname__", None) == "require.<locals>.check":
            cells = dict(zip(call.__code__.co_freevars, call.__closure__ or (), strict=True))
            found.add(frozenset(cells["allowed"].cell_contents))
        found |= _required(dependency)
    return found


def required_roles(app: Any) -> dict[Route, frozenset[str] | None]:
    """Each route of the OpenAPI document with the roles it needs (None: public), from the code; a route this
    test cannot classify fails it."""
    declared: dict[Route, set[frozenset[str]]] = {}
    # Through included routers (FastAPI includes them lazily): each route with its prefixed path.
    for context in iter_route_contexts(app.routes):
        original = context.original_route
        if isinstance(original, APIRoute) and context.path_format is not None:
            for method in context.methods or ():
                declared[(method.lower(), context.path_format)] = _required(original.dependant)
    needed: dict[Route, frozenset[str] | None] = {}
    for template, operations in app.openapi()["paths"].items():
        for method in operations:
            route = (method, template)
            dependencies = declared.get(route, set())
            if route in IN_BODY or route in POLICY_ROLES or route in PUBLIC:
                # A listed route declares no require() dependency of its own: the list does not hide one.
                assert not dependencies, f"{route} declares {dependencies}: take it off the lists of this test"
                needed[route] = None if route in PUBLIC else (IN_BODY | POLICY_ROLES)[route]
                continue
            assert len(dependencies) == 1, f"classify {route} for the role walk: it declares {dependencies or 'none'}"
            needed[route] = next(iter(dependencies))
    return needed


@pytest.fixture
def gateway_client(engine: Engine, jwks: JwksServer, upstream: Upstream) -> Iterator[TestClient]:
    policies = PolicySet(
        [
            Policy.model_validate(
                {
                    "metadata": {"name": "echo-pii", "namespace": "default"},
                    "spec": {
                        "selector": {"matchLabels": {"app": "echo"}},
                        "pii": {
                            "entities": ["EMAIL_ADDRESS"],
                            "action": "tokenize",
                            "unmaskRoles": sorted(UNMASK_ROLES),
                        },
                    },
                }
            )
        ]
    )
    echo = policies.effective(Target("Workflow", "echo", "default", {"app": "echo"})).pii
    # Read by the detokenize route only (the intake's masking stays off: nothing in this walk is masked).
    engine.pii = WorkflowMasking(lambda workflow: echo if workflow == "echo" else None, KEYS)
    with TestClient(create_app(engine, SETTINGS, oidc=verifier(jwks))) as client:
        yield client


def test_every_route_refuses_a_caller_without_its_role(gateway_client: TestClient, ec_key: Signer) -> None:
    client = gateway_client
    needed = required_roles(client.app)
    assert set(needed) >= {
        ("get", "/v1/tasks"),
        ("post", "/v1/erasures"),
        ("post", "/v1/approvals/{approvalId}/approve"),
    }
    for (method, template), roles in sorted(needed.items(), key=lambda item: item[0][::-1]):
        path = template.format(taskId=NOWHERE, approvalId=NOWHERE, name="echo")
        body = BODIES.get((method, template))

        def call(held: Set[str], method: str = method, path: str = path, body: Any = body) -> Any:
            token = ec_key.token(iss=ISSUER, tenant="acme", sub="role-walker", roles=sorted(held))
            return client.request(method.upper(), path, headers=auth(token), json=body)

        where = f"{method.upper()} {template}"
        if roles is None:
            assert call(set()).status_code == 200, where
            continue
        lacking = ROLES - roles - {"admin"}
        refused = call(lacking)
        assert refused.status_code == 403, (where, sorted(lacking), refused.text)
        assert_problem(refused, 403, "unmask-denied" if (method, template) in POLICY_ROLES else "forbidden")
        assert refused.headers["content-type"].startswith(PROBLEM)
        for held in [*({role} for role in sorted(roles)), {"admin"}]:
            answered = call(held)
            assert answered.status_code != 403, (where, sorted(held), answered.text)
            assert answered.status_code < 500, (where, sorted(held), answered.text)
