"""Authentication (``Authorization: Bearer <API key or OIDC token>``), role checks and rate limits.

An API key (``aip_...``) maps to a tenant, a principal name and roles (``crds.base.Role``), from the engine's
database. When the gateway has an OIDC verifier, any other bearer token is taken as a JWT from the identity
provider: tenant, subject, groups and roles come from its claims (``policies.access_oidc``). Either way, the roles
the Policies the gateway follows bind to the principal (or its groups) in its tenant are added per request
(``policies.access.RoleGrants``), so a Policy change applies to the next request. Every route that touches
tasks or approvals runs as the caller's tenant: the engine is always asked with that tenant, so another tenant's
ids are simply not found (404, never 403, so ids do not leak across tenants).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import floods, logmask
from api.problems import ProblemError
from api.state import Gateway, gateway
from api.store import KEY_PREFIX, ApiKeyStore, Principal
from crds.policy import Policy
from engine import Engine
from policies.access import RoleGrants
from policies.access_oidc import Identity, JwksUnavailableError, TokenError
from policies.effective import Target, applicable
from policies.model_calls import ModelPolicies, TargetOf, default_target
from policies.payloads import PayloadLog
from policies.ratelimit import LEASE, RateLimiter, Refusal, limiting
from policies.sources import PolicySet

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An aiplane API key (`Authorization: Bearer aip_...`) or, where the gateway is configured for "
    "OIDC, an access token (JWT) of the identity provider.",
)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="aiplane"'}


def create_api_key(engine: Engine, tenant: str, principal: str, roles: Iterable[str]) -> str:
    """Make an API key in ``engine``'s database (for ``aiplane dev`` and tests); returns the plaintext."""
    return ApiKeyStore(engine.db).create(tenant, principal, roles)


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    gw: Annotated[Gateway, Depends(gateway)],
) -> Principal:
    return await _principal(request, gw, credentials.credentials if credentials is not None else None)


async def authorize(request: Request, gw: Gateway, roles: frozenset[str]) -> Principal:
    """``authenticate`` and ``require`` in one call, without FastAPI's dependency machinery: for the predict
    path, where resolving a tree of dependencies is a measurable share of the gateway's overhead."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    principal = await _principal(request, gw, key.strip() if scheme.lower() == "bearer" else None)
    _check_roles(principal, roles)
    return principal


async def _principal(request: Request, gw: Gateway, key: str | None) -> Principal:
    if not key:
        raise ProblemError(
            401,
            "unauthorized",
            "this request needs an API key: send it as 'Authorization: Bearer <key>'",
            headers=_CHALLENGE,
        )
    principal: Principal | None
    if gw.oidc is not None and not key.startswith(KEY_PREFIX):
        principal = await _token_principal(gw, key)
    else:
        found, principal = gw.keys.cached(key)
        if not found:
            principal = await anyio.to_thread.run_sync(gw.keys.verify, key)
    if principal is None:
        raise ProblemError(
            401,
            "invalid-api-key",
            "the API key is unknown or revoked; ask an admin of your tenant for a valid key",
            headers={"WWW-Authenticate": 'Bearer realm="aiplane", error="invalid_token"'},
        )
    grants = gw.grants
    if grants:
        granted = grants.roles_for(principal.tenant, principal.name, principal.groups)
        if not granted <= principal.roles:
            principal = dataclasses.replace(principal, roles=principal.roles | granted)
    request.state.tenant = principal.tenant
    request.state.principal = principal.name
    logmask.bind(tenant=principal.tenant)
    return principal


async def _token_principal(gw: Gateway, token: str) -> Principal:
    verifier = gw.oidc
    assert verifier is not None
    identity = verifier.cached(token)
    if identity is None:
        try:
            identity = await anyio.to_thread.run_sync(verifier.verify, token)
        except TokenError as exc:
            raise ProblemError(
                401,
                "invalid-token",
                f"{exc.reason}; send a valid access token of the configured identity provider, or an API key",
                headers={"WWW-Authenticate": 'Bearer realm="aiplane", error="invalid_token"'},
            ) from exc
        except JwksUnavailableError as exc:
            raise ProblemError(
                503,
                "identity-provider-unavailable",
                f"the identity provider's signing keys cannot be fetched ({exc}); retry shortly",
                headers={"Retry-After": "5"},
            ) from exc
    return _from_identity(identity)


def _from_identity(identity: Identity) -> Principal:
    return Principal(
        tenant=identity.tenant,
        name=identity.subject,
        roles=identity.roles,
        key_id=f"oidc:{identity.subject}",
        groups=identity.groups,
    )


def require(*roles: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency giving the caller's principal if it holds one of ``roles`` (admin holds them all)."""
    allowed = frozenset(roles)

    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        _check_roles(principal, allowed)
        return principal

    return check


def follow_policies(
    gw: Gateway,
    policies: PolicySet,
    workflows: Mapping[str, Target],
    *,
    separation_of_duties: bool = True,
    models: TargetOf = default_target,
) -> None:
    """Enforce ``policies`` in the gateway from now on, following their changes: the token buckets and the role
    grants (``access.roles``) are rebuilt on every change (so a change refills the buckets), separation of duties
    asks for the workflow's Policies per approval (unless ``separation_of_duties`` is off), and predictions follow
    the Policies that select their Model (``policies.model_calls``). ``workflows`` maps a workflow name to its
    selection target (namespace and labels), ``models`` a Model's name to its target."""

    def rebuild(current: tuple[Policy, ...]) -> None:
        # One attribute swap: safe from the watch's thread. Tokens the old limiter held are dropped, not spent.
        gw.limiter = RateLimiter.from_policies(current, budget=gw.budget)
        gw.grants = RoleGrants.from_policies(current)

    def governing(workflow: str) -> Sequence[Policy]:
        target = workflows.get(workflow)
        return applicable(policies.policies(), target) if target is not None else ()

    if separation_of_duties:
        gw.governing = governing
    gw.limiting = lambda tenant, reason, bucket: limiting(policies.policies(), tenant, reason, bucket)
    # The engine's PII keys (None without a pii Policy in aiplane dev: hash and tokenize then redact).
    keys = gw.engine.pii.keys if gw.engine.pii is not None else None
    gw.model_policies = ModelPolicies(policies, models, keys)
    gw.payloads = PayloadLog(lambda workflow: None, model_masking=gw.model_policies.masking)
    gw.payloads.keep = gw.engine.payload_logs.keep  # kept in the store, where retention and erasure reach them
    policies.on_change(rebuild)


async def check_rate(gw: Gateway, tenant: str, priority: str | None) -> None:
    """429 with ``Retry-After`` when ``tenant`` is over a rate limit (``policies.ratelimit``; ``priority`` None for
    a model call). Called after authentication, so a flood of bad keys does not spend a tenant's tokens. Tokens
    this gateway holds are spent on the event loop; a lease from the store's global bucket runs in a thread."""
    limiter = gw.limiter
    refusal = limiter.take_local(tenant, priority)
    if refusal is LEASE:
        refusal = await anyio.to_thread.run_sync(limiter.take, tenant, priority)
    if isinstance(refusal, Refusal):
        await floods.refused(
            gw, tenant, "rate-limited", refusal.priority, refusal.describe(), limit=refusal.rate, burst=refusal.burst
        )
        raise ProblemError(
            429,
            "rate-limited",
            refusal.describe(),
            headers={"Retry-After": refusal.retry_after_header},
            tenant=tenant,
            priority=refusal.priority,
            limit=refusal.rate,
            burst=refusal.burst,
        )


def _check_roles(principal: Principal, allowed: frozenset[str]) -> None:
    if not principal.has_any(allowed):
        raise ProblemError(
            403,
            "forbidden",
            f"this needs one of the roles {sorted(allowed | {'admin'})}; the API key has {sorted(principal.roles)}",
        )


SUBMITTERS = frozenset({"submitter"})

# Who may do what. Reading is open to every role of the tenant; writes need the role that owns them.
Submitter = Annotated[Principal, Depends(require("submitter"))]
Reader = Annotated[Principal, Depends(require("submitter", "approver", "auditor"))]
Approver = Annotated[Principal, Depends(require("approver"))]
