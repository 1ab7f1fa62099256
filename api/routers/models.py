"""``POST /v1/models/{name}/predict``: synchronous inference, straight to the model's endpoint (no task).

Kept thin because it is benchmarked against calling BentoML directly: no body parsing (the bytes are passed
through), the API key is checked from a cache without FastAPI's dependency tree, one shared keep-alive httpx
connection pool (``api.upstream.ModelClient``), no thread hops. The
live version is picked at random by the traffic weights the Model operator publishes (the canary split), the
W3C ``traceparent`` of the gateway span goes upstream, and upstream failures become 502/504 problems.
"""

from __future__ import annotations

import random
import time
from typing import Annotated

import httpx
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from opentelemetry import propagate

from api.auth import SUBMITTERS, authorize
from api.problems import ProblemError, problem_responses
from api.state import Gateway
from api.telemetry import MODEL_CALL_DURATION, gateway_span, mark_error
from crds.base import DNS_LABEL_PATTERN
from engine import pick_endpoint

router = APIRouter(prefix="/v1/models", tags=["models"])

# Request headers passed on to the model; everything else (Authorization above all) stays at the gateway.
_FORWARD = ("content-type", "accept", "idempotency-key", "x-request-id")
# Response headers passed back (not Content-Encoding: httpx hands over the body decoded).
_RETURN = ("content-type", "x-request-id")
# Upstream answers that are about the request itself: returned as a problem with the same status.
_CLIENT_ERRORS = frozenset({400, 413, 415, 422})
_rng = random.Random()


@router.post(
    "/{name}/predict",
    summary="Call a model synchronously",
    response_class=Response,
    responses={
        200: {"description": "The model's answer, passed through.", "content": {"application/json": {"schema": {}}}},
        **problem_responses(400, 401, 403, 404, 413, 415, 422, 429, 502, 503, 504),
    },
    openapi_extra={
        # Authenticated like every /v1 route, but checked inline (see api.auth.authorize).
        "security": [{"apiKey": []}],
        "requestBody": {
            "required": False,
            "description": "The model's input, passed through as is (JSON for BentoML services).",
            "content": {"application/json": {"schema": {}}},
        },
    },
)
async def predict(
    *,
    request: Request,
    name: Annotated[str, Path(max_length=63, pattern=DNS_LABEL_PATTERN, description="Name of the Model.")],
    api: Annotated[
        str,
        Query(
            max_length=128,
            pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
            description="The BentoML API to call (a service may have several, e.g. extract and explain).",
        ),
    ] = "predict",
) -> Response:
    gw: Gateway = request.app.state.gateway
    principal = await authorize(request, gw, SUBMITTERS)
    with gateway_span(request, "predict", tenant=principal.tenant) as span:
        span.set_attribute("aiplane.model.name", name)
        endpoints = gw.engine.model_resolver.endpoints(name)
        endpoint = pick_endpoint(endpoints, _rng)
        if endpoint is None:
            if endpoints:
                mark_error(span, "no endpoint with traffic")
                raise ProblemError(
                    503,
                    "model-unavailable",
                    f"model {name!r} has no version taking traffic right now; retry shortly",
                    headers={"Retry-After": "1"},
                    model=name,
                )
            raise ProblemError(
                404,
                "model-not-found",
                f"there is no live model named {name!r}; check the name, or wait until the Model is Ready",
                model=name,
            )
        span.set_attribute("aiplane.model.version", endpoint.version)
        headers = {k: v for k, v in request.headers.items() if k in _FORWARD}
        headers.setdefault("content-type", "application/json")
        propagate.inject(headers)
        span.set_attribute("aiplane.model.api", api)
        url = f"{endpoint.url.rstrip('/')}/{api}"
        body = await request.body()
        start = time.perf_counter()
        outcome = "ok"
        try:
            upstream = await gw.model_client().post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            outcome = "timeout"
            mark_error(span, "upstream timeout")
            raise ProblemError(
                504,
                "upstream-timeout",
                f"model {name!r} (version {endpoint.version}) did not answer within "
                f"{gw.settings.predict_timeout:g}s; retry, or submit a task for long-running work",
                model=name,
                version=endpoint.version,
            ) from exc
        except httpx.HTTPError as exc:
            outcome = "unreachable"
            mark_error(span, "upstream unreachable")
            raise ProblemError(
                502,
                "upstream-unreachable",
                f"model {name!r} (version {endpoint.version}) could not be reached ({type(exc).__name__}); "
                "retry shortly",
                model=name,
                version=endpoint.version,
            ) from exc
        finally:
            if outcome != "ok":
                MODEL_CALL_DURATION.labels(name, endpoint.version, outcome).observe(time.perf_counter() - start)
        status = upstream.status
        outcome = "ok" if status < 400 else "rejected" if status in _CLIENT_ERRORS or status == 429 else "error"
        MODEL_CALL_DURATION.labels(name, endpoint.version, outcome).observe(time.perf_counter() - start)
        span.set_attribute("http.response.status_code", status)
        if status < 400:
            return Response(
                upstream.content,
                status_code=status,
                headers={k: v for k, v in upstream.headers.items() if k in _RETURN},
            )
        excerpt = upstream.content[:1024].decode("utf-8", "replace")
        if status in _CLIENT_ERRORS or status == 429:
            retry = {"Retry-After": upstream.headers["retry-after"]} if "retry-after" in upstream.headers else {}
            raise ProblemError(
                status,
                "model-rejected-request" if status != 429 else "model-overloaded",
                f"model {name!r} refused the request ({status}): {excerpt}",
                headers=retry,
                model=name,
                version=endpoint.version,
                upstream_status=status,
            )
        mark_error(span, f"upstream {status}")
        raise ProblemError(
            502,
            "upstream-error",
            f"model {name!r} (version {endpoint.version}) failed with {status}: {excerpt}",
            model=name,
            version=endpoint.version,
            upstream_status=status,
        )
