"""What the routers share: the engine, the settings, the gateway's stores and the model client.

One ``Gateway`` per app, kept on ``app.state.gateway`` and handed to routes by the ``gateway`` dependency.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio.to_thread
from fastapi import Request

from api import admitted, floods
from api.batching import SubmitBatcher
from api.settings import GatewaySettings
from api.store import ApiKeyStore
from api.upstream import ModelClient
from api.validation import InputValidators
from crds.policy import Policy
from engine import Engine, IdempotencyStore, TaskSpanStore
from policies.access import RoleGrants
from policies.access_oidc import OIDCVerifier
from policies.coalesce import Coalescer
from policies.model_calls import ModelPolicies
from policies.payloads import PayloadLog
from policies.ratelimit import Budget, RateLimiter


@dataclass
class Gateway:
    engine: Engine
    settings: GatewaySettings
    keys: ApiKeyStore
    idempotency: IdempotencyStore
    spans: TaskSpanStore
    validators: InputValidators = field(default_factory=InputValidators)
    #: The shared keep-alive connection pool for model calls; opened by the app's lifespan.
    http: ModelClient | None = None
    #: Task submissions, written in batches (group commit).
    submissions: SubmitBatcher = field(init=False)
    #: Token buckets per tenant and priority class (none by default); see ``api.auth.check_rate``.
    limiter: RateLimiter = field(default_factory=RateLimiter)
    #: The store's global token buckets that ``limiter`` leases from (PostgreSQL: replicas share one limit); None
    #: keeps the buckets in this process (SQLite, one process).
    budget: Budget | None = None
    #: Verifies OIDC bearer tokens (JWTs) besides API keys; None accepts API keys only.
    oidc: OIDCVerifier | None = None
    #: The roles Policies' ``access.roles`` grant, added to every caller's own (none until a policy source is
    #: plugged in by ``api.auth.follow_policies``, which swaps it on every Policy change).
    grants: RoleGrants = field(default_factory=RoleGrants)
    #: The Policies that govern a workflow (by name), for the checks the gateway makes at call time (separation
    #: of duties); none until a policy source is plugged in.
    governing: Callable[[str], Sequence[Policy]] = field(default=lambda workflow: ())
    #: The Policies that select Models, for predictions (tenant access, masking, payload logging); None until a
    #: policy source is plugged in (``api.auth.follow_policies``).
    model_policies: ModelPolicies | None = None
    #: Logs the sampled predictions of Models whose Policies ask for payload logs.
    payloads: PayloadLog | None = None
    #: Which 429s get an audit record (``api.floods``): one per tenant and bucket per second.
    refusals: Coalescer = field(default_factory=Coalescer)
    #: Which predictions allowed under a Model's Policies get an audit record (``api.admitted``): one per tenant,
    #: Model and Policy versions per second.
    admitted: Coalescer = field(default_factory=Coalescer)
    #: The Policies whose rate limits or quota (``reason``, ``bucket``) apply to a tenant, named by a 429's record.
    limiting: Callable[[str, str, str], Sequence[Policy]] = field(default=lambda tenant, reason, bucket: ())

    def __post_init__(self) -> None:
        self.submissions = SubmitBatcher(self.engine)

    def open_model_client(self) -> ModelClient:
        settings = self.settings
        self.http = ModelClient(
            timeout=settings.predict_timeout,
            connect_timeout=settings.predict_connect_timeout,
            max_connections=settings.predict_max_connections,
        )
        return self.http

    def model_client(self) -> ModelClient:
        # Normally opened by the lifespan; an app served without one (a bare ASGI transport) opens it here.
        return self.http if self.http is not None else self.open_model_client()

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()
            self.http = None
        # The 429s counted since their bucket's last audit record, so the records add up to every one given.
        await anyio.to_thread.run_sync(lambda: floods.flush(self))
        await anyio.to_thread.run_sync(lambda: admitted.flush(self))


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw
