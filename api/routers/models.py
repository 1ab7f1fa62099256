"""``POST /v1/models/{name}/predict``: synchronous inference, straight to the model's endpoint (no task).

Benchmarked against calling BentoML directly (``benchmarks/bench_predict.py``), so the gateway's own share of a
call is kept small. ``PredictFastPath``, an ASGI middleware inside the telemetry and body-limit middlewares,
serves these requests before FastAPI's routing: no dependency tree, no pydantic validation of parameters (the
two are checked by hand, as the route below declares them), no body parsing (the bytes are passed through), the
API key checked from a cache, and the pooled HTTP/1.1 client of ``api.upstream``. Errors are answered by the
app's own exception handlers, as for any route (problem+json). The FastAPI route stays: it is the operation in the
OpenAPI document, and it serves the same logic when the app is built without the fast path (tests check that both
answer alike).

The live version is picked at random by the traffic weights the Model operator publishes (the canary split), the
W3C ``traceparent`` of the gateway span goes upstream, and upstream failures become 502/504 problems.

The Policies that select the Model govern the call (``policies.model_calls``, plugged in by
``api.auth.follow_policies``): a tenant they leave out is refused (403, audited, as a regional install's refusal of
a Model in another region is), the span's error text and the sampled payload log are masked by the Model's ``pii``.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any
from urllib.parse import parse_qsl

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from opentelemetry import propagate
from opentelemetry.trace import Span
from starlette.types import ASGIApp, Receive, Scope, Send

from api import admitted, logmask, predictions
from api.asgi import ClientGoneError, handled, read_body, route_path
from api.auth import SUBMITTERS, authorize, check_rate
from api.problems import FieldError, ProblemError, field_error, problem_responses
from api.state import Gateway
from api.store import Principal
from api.telemetry import MODEL_CALL_DURATION, gateway_span, mark_error
from api.upstream import Answer, UpstreamTimeoutError, UpstreamUnreachableError
from crds.base import DNS_LABEL_PATTERN
from engine import pick_endpoint
from policies import metrics as policy_metrics
from policies.model_calls import ModelCall

router = APIRouter(prefix="/v1/models", tags=["models"])

NAME_MAX = 63
API_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
API_MAX = 128
DEFAULT_API = "predict"

# Request headers passed on to the model; everything else (Authorization above all) stays at the gateway.
_FORWARD = frozenset({b"content-type", b"accept", b"idempotency-key", b"x-request-id"})
# Response headers passed back.
_RETURN = frozenset({b"content-type", b"x-request-id"})
# Upstream answers that are about the request itself: returned as a problem with the same status.
_CLIENT_ERRORS = frozenset({400, 413, 415, 422})
_rng = random.Random()
_name_re = re.compile(DNS_LABEL_PATTERN)
_api_re = re.compile(API_PATTERN)


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
    name: Annotated[str, Path(max_length=NAME_MAX, pattern=DNS_LABEL_PATTERN, description="Name of the Model.")],
    api: Annotated[
        str,
        Query(
            max_length=API_MAX,
            pattern=API_PATTERN,
            description="The BentoML API to call (a service may have several, e.g. extract and explain).",
        ),
    ] = DEFAULT_API,
) -> Response:
    gw: Gateway = request.app.state.gateway
    answer = await call_model(gw, request, name, api, request.body)
    return Response(
        answer.content,
        status_code=answer.status,
        headers={k.decode("latin-1"): v.decode("latin-1") for k, v in answer.headers if k in _RETURN},
    )


# The route, for the request-duration metric, the access log and the span (all labelled by its path template).
PREDICT_ROUTE = router.routes[-1]


class PredictFastPath:
    """Serves ``POST /v1/models/{name}/predict`` itself; every other request goes on to ``app``."""

    _prefix = "/v1/models/"
    _suffix = "/predict"

    def __init__(self, app: ASGIApp, *, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = route_path(scope)
            if path.startswith(self._prefix) and path.endswith(self._suffix):
                name = path[len(self._prefix) : -len(self._suffix)]
                if name and "/" not in name:  # otherwise not this route: FastAPI answers (404)
                    await self._serve(scope, receive, send, name)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        scope["route"] = PREDICT_ROUTE
        scope["path_params"] = {"name": name}
        request = Request(scope, receive)
        try:
            api = _check_parameters(name, scope["query_string"])
            answer = await call_model(self.gateway, request, name, api, lambda: read_body(receive))
        except ClientGoneError:
            return  # the client left while sending its body: nobody to answer
        except Exception as exc:
            # Answered by the app's own handlers, as if it had come from the route.
            response = await handled(request, exc)
            if response is None:
                raise
            await response(scope, receive, send)
            return
        headers = [(k, v) for k, v in answer.headers if k in _RETURN]
        headers.append((b"content-length", b"%d" % len(answer.content)))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.content})


def _check_parameters(name: str, query_string: bytes) -> str:
    """The ``api`` query parameter, after checking it and ``name`` as the route declares them (422 otherwise,
    as FastAPI's validation would answer)."""
    api = DEFAULT_API
    if query_string:
        for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if key == "api":
                api = value  # the last one wins, as in Starlette's QueryParams
    errors = [
        *_string_errors("name", "path", name, NAME_MAX, _name_re),
        *_string_errors("api", "query", api, API_MAX, _api_re),
    ]
    if errors:
        names = ", ".join(sorted({e.field for e in errors}))
        raise ProblemError(
            422, "validation-failed", f"the request is invalid; fix these fields: {names}", errors=errors
        )
    return api


def _string_errors(
    field: str, location: str, value: str, max_length: int, pattern: re.Pattern[str]
) -> list[FieldError]:
    # Pydantic's checks and messages for a str with max_length and pattern, in its order.
    if len(value) > max_length:
        return [field_error(field, f"String should have at most {max_length} characters", location)]
    if pattern.search(value) is None:
        return [field_error(field, f"String should match pattern '{pattern.pattern}'", location)]
    return []


_BodyReader = Callable[[], Awaitable[bytes]]


async def call_model(gw: Gateway, request: Request, name: str, api: str, read_body: _BodyReader) -> Answer:
    """The model's answer to this request (status below 400), or a ``ProblemError`` saying why there is none."""
    principal = await authorize(request, gw, SUBMITTERS)
    tenant = principal.tenant
    await check_rate(gw, tenant, None)
    governed, mask = _governed(gw, name, tenant)
    with gateway_span(request, "predict", tenant=tenant, mask=mask) as span:
        span.set_attribute("aiplane.model.name", name)
        await _admit_and_record(gw, span, principal, name, governed)
        resolver = gw.engine.model_resolver
        endpoints = resolver.endpoints(name)
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
        span.set_attribute("aiplane.model.api", api)
        headers = _forwarded_headers(request.scope["headers"])
        propagate.inject(headers)
        body = await read_body()
        namespace = predictions.namespace_of(resolver)
        start = time.perf_counter()
        try:
            answer = await gw.model_client().post(endpoint.url, api, body, headers)
        except UpstreamTimeoutError as exc:
            MODEL_CALL_DURATION.labels(namespace, name, endpoint.version, "timeout").observe(
                time.perf_counter() - start
            )
            mark_error(span, "upstream timeout")
            raise ProblemError(
                504,
                "upstream-timeout",
                f"model {name!r} (version {endpoint.version}) did not answer within "
                f"{gw.settings.predict_timeout:g}s ({exc.reason}); retry, or submit a task for long-running work",
                model=name,
                version=endpoint.version,
            ) from exc
        except UpstreamUnreachableError as exc:
            MODEL_CALL_DURATION.labels(namespace, name, endpoint.version, "unreachable").observe(
                time.perf_counter() - start
            )
            mark_error(span, "upstream unreachable")
            raise ProblemError(
                502,
                "upstream-unreachable",
                f"model {name!r} (version {endpoint.version}) could not be reached ({exc.reason}); retry shortly",
                model=name,
                version=endpoint.version,
            ) from exc
        status = answer.status
        outcome = "ok" if status < 400 else "rejected" if status in _CLIENT_ERRORS or status == 429 else "error"
        MODEL_CALL_DURATION.labels(namespace, name, endpoint.version, outcome).observe(time.perf_counter() - start)
        span.set_attribute("http.response.status_code", status)
        if status < 400:
            field = predictions.prediction_field(resolver, name)
            if field is not None:  # only while a canary's drift is measured
                predictions.count(namespace, name, endpoint.version, answer.content, field)
            if governed is not None and governed.sampled(_rng):
                await _log_payload(gw, governed, version=endpoint.version, request=body, answer=answer.content)
            return answer
        excerpt = answer.content[:1024].decode("utf-8", "replace")
        if status in _CLIENT_ERRORS or status == 429:
            retry_after = answer.header(b"retry-after")
            raise ProblemError(
                status,
                "model-rejected-request" if status != 429 else "model-overloaded",
                f"model {name!r} refused the request ({status}): {excerpt}",
                headers={"Retry-After": retry_after.decode("latin-1")} if retry_after is not None else {},
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


def _governed(gw: Gateway, name: str, tenant: str) -> tuple[ModelCall | None, Callable[[str], str] | None]:
    """What the Policies selecting the Model say for this tenant (cached per model, tenant and PolicySet version),
    and the mask of an error's text, which may quote the model's answer (None: not masked)."""
    model_policies = gw.model_policies
    if model_policies is None:
        return None, None
    governed = model_policies.call(name, tenant)
    # Error logs of the call masked by the Model's own Policies rather than every entity (api.logmask).
    logmask.bind(tenant=tenant, model=name, model_masking=model_policies.masking)
    return governed, model_policies.text_mask(governed)


async def _admit_and_record(
    gw: Gateway, span: Span, principal: Principal, name: str, governed: ModelCall | None
) -> None:
    """``_admit``, then the call's allow record when Policies govern it (coalesced: ``api.admitted``)."""
    await _admit(gw, span, principal, name, governed)
    if governed is not None:
        await admitted.allowed(gw, governed)


async def _admit(gw: Gateway, span: Span, principal: Principal, name: str, governed: ModelCall | None) -> None:
    """Refuse (403, audited) a call the Model's Policies deny the tenant (deny wins) or that would take the data out
    of a regional install's region."""
    residency = gw.engine.residency
    if governed is not None:
        region = residency.model_regions.get(name) if residency is not None else None
        refused = governed.refusal(region)  # the decision the engine's model steps take too
        if refused is not None and refused.reason == "tenant-denied":
            mark_error(span, "tenant denied")
            policy_metrics.denied("access")
            await _audit_denial(gw, principal, name, reason=refused.reason, detail=refused.detail, by=refused.policies)
            raise ProblemError(403, refused.reason, refused.detail, model=name, tenant=principal.tenant)
        if refused is not None:
            mark_error(span, "residency denied")
            policy_metrics.denied("residency")
            await _audit_denial(gw, principal, name, reason=refused.reason, detail=refused.detail, by=refused.policies)
            allowed = ", ".join(sorted(governed.regions or ()))
            raise ProblemError(403, refused.reason, refused.detail, model=name, allowed_regions=allowed)
    if residency is not None and (why := residency.outside_home("model", name)) is not None:
        # A regional install's gateway keeps the request's data in its region, as its tasks' (policies.residency).
        mark_error(span, "residency denied")
        policy_metrics.denied("residency")
        home = residency.home or ""
        # No Policy decides this (the install's region does); the record names the Model's residency Policies.
        deciding = governed.residency_policies if governed is not None else ()
        await _audit_denial(gw, principal, name, reason="residency-denied", detail=why, by=deciding, region=home)
        raise ProblemError(403, "residency-denied", why, model=name, region=home)


async def _audit_denial(
    gw: Gateway, principal: Principal, model: str, *, reason: str, detail: str, by: Iterable[str], **facts: str
) -> None:
    """A refused prediction on the audit log, as intake's refusals are: kind ``policy``, decision ``deny``, subject
    ``model/<name>/predict``, with the Policy versions that decided it (never the request's data)."""
    details = {"reason": reason, "detail": detail, "model": model, "by": principal.name, "policies": sorted(by)}
    details.update(facts)
    await anyio.to_thread.run_sync(
        lambda: gw.engine.audit.append(
            "policy", f"model/{model}/predict", "deny", details, tenant=principal.tenant, actor="gateway"
        )
    )


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace")  # masked as text


async def _log_payload(gw: Gateway, call: ModelCall, *, version: str, request: bytes, answer: bytes) -> None:
    """A sampled prediction's request and answer to the payload log, masked by the Model's Policies; the masking
    (presidio, milliseconds) runs off the event loop."""
    payloads = gw.payloads
    if payloads is None:
        return
    await anyio.to_thread.run_sync(
        lambda: payloads.prediction(
            tenant=call.tenant,
            model=call.model,
            version=version,
            request=_json(request),
            answer=_json(answer),
            rate=call.sample_rate or 0.0,
        )
    )


def _forwarded_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers = {"content-type": "application/json"}  # BentoML's JSON APIs want it; the caller's wins
    for key, value in raw:
        if key in _FORWARD:
            headers[key.decode("latin-1")] = value.decode("latin-1")
    return headers
