"""The app factory: ``create_app(engine, settings)`` wires routers, auth, problem handlers and telemetry.

The gateway holds no state of its own beyond a few caches: tasks, approvals, idempotency records and API keys are
in the engine's database, so any number of gateway processes can serve one store. Run it with uvicorn next to
the engine's workers (in the same process for ``aiplane dev``, or separately)::

    engine = Engine("sqlite:///.run/dev/engine.db")
    worker = engine.worker().start()
    app = create_app(engine, GatewaySettings())
    uvicorn.run(app, host="127.0.0.1", port=8080)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api import logmask
from api.fast_submit import SubmitFastPath
from api.middleware import BodyLimitMiddleware, TelemetryMiddleware
from api.problems import install_handlers, problem_components
from api.routers import agents, approvals, dead_letters, detokenize, erasures, health, lineage, models, tasks
from api.settings import GatewaySettings
from api.state import Gateway
from api.store import ApiKeyStore
from api.telemetry import install_span_store
from engine import Engine, IdempotencyStore, RateBudgetStore, TaskSpanStore
from policies.access_oidc import OIDCVerifier
from policies.ratelimit import RateLimiter

TITLE = "aiplane gateway"
VERSION = "v1"
DESCRIPTION = (
    "Submit tasks to workflows, follow them, decide their approvals, and call models synchronously.\n\n"
    "Authenticate with `Authorization: Bearer <api key>`. Errors are RFC 9457 `application/problem+json`. "
    "Fields are camelCase; times are RFC 3339 in UTC; ids are ULIDs."
)


def create_app(
    engine: Engine,
    settings: GatewaySettings | None = None,
    *,
    span_store: TaskSpanStore | None = None,
    rate_limiter: RateLimiter | None = None,
    oidc: OIDCVerifier | None = None,
) -> FastAPI:
    """The gateway for ``engine``.

    ``span_store``: where ``GET /v1/tasks/{id}/trace`` reads spans from; by default the process's store on the
    global TracerProvider (installed if there is none; see ``api.telemetry.install_span_store``).
    ``rate_limiter``: token buckets per tenant and priority class (``policies.ratelimit``); none by default.
    On PostgreSQL the limits that ``api.auth.follow_policies`` builds lease from the store's global buckets, so
    they hold across gateway replicas; on SQLite (one process) the buckets stay in the process.
    ``oidc``: accept OIDC bearer tokens (JWTs verified against the issuer's JWKS) besides API keys.
    """
    settings = settings or GatewaySettings()
    budget = None if engine.db.is_sqlite else RateBudgetStore(engine.db)
    keys = ApiKeyStore(engine.db, cache_ttl=settings.api_key_cache_ttl)
    gw = Gateway(
        engine=engine,
        settings=settings,
        keys=keys,
        idempotency=_idempotency(engine, settings),
        spans=span_store or install_span_store(),
        limiter=rate_limiter or RateLimiter(budget=budget),
        budget=budget,
        oidc=oidc,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        gw.open_model_client()
        try:
            yield
        finally:
            await gw.close()

    app = FastAPI(
        title=TITLE,
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry (spans per request, dependency and serialization, its own metrics) turns
        # itself on once a TracerProvider exists; the gateway's spans (aiplane.gateway.*) and metrics replace it,
        # and on the predict path it would cost more than the rest of the request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.gateway = gw
    install_handlers(app)
    # Inside the body limit and telemetry, like the route it stands in for (see api.fast_submit).
    app.add_middleware(SubmitFastPath, gateway=gw)
    # Innermost, so predict requests still pass the body limit and are measured and logged like any other.
    app.add_middleware(models.PredictFastPath, gateway=gw)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(TelemetryMiddleware, log_requests=settings.access_log)
    if engine.pii is not None:
        # Error logs masked like the data (api.logmask); outermost, so errors before authentication are too.
        logmask.install()
        app.add_middleware(logmask.LogMaskingMiddleware, masking=engine.pii)
    for module in (models, tasks, lineage, agents, approvals, dead_letters, detokenize, erasures, health):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=TITLE, version=VERSION, description=DESCRIPTION, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(problem_components())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _idempotency(engine: Engine, settings: GatewaySettings) -> IdempotencyStore:
    """The engine's own key store, kept as long as ``settings`` say: the engine's intake writes a submission's key
    in the task's transaction, so a store of the gateway's own would leave those keys at the engine's default."""
    store = engine.idempotency
    store.ttl = settings.idempotency_ttl
    store.in_flight_timeout = settings.idempotency_in_flight_timeout
    return store
