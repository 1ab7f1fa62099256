"""``SubmitFastPath``: serves well-formed async ``POST /v1/tasks`` without FastAPI's dependency resolution.

Resolving the route's parameters through FastAPI (a tree of auth, role and gateway dependencies, the body, two
query parameters and a header) cost about as much CPU as writing the task (benchmarks/bench_submit). This ASGI
middleware, inside the telemetry and body-limit middlewares, reads those parameters by hand, validates the body
with the same pydantic model, authenticates with ``api.auth.authorize`` and answers with the route's own
``accept``. It only takes requests it can read without doubt: an async submission with a JSON body that the model
accepts and query parameters it knows. Anything else (a malformed body or parameter, ``mode=sync``, another
content type) goes to the FastAPI route unchanged, body included, so validation errors keep coming from one place.
Errors raised once a request is taken (auth, unknown workflow, idempotency) are answered by the app's own
exception handlers, as they would be on the route.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.asgi import ClientGoneError, handled, read_body, replaying, route_path
from api.auth import SUBMITTERS, authorize
from api.problems import ProblemError
from api.routers.tasks import SUBMIT_ROUTE, accept
from api.schemas import SubmitTaskRequest
from api.state import Gateway

_PATH = "/v1/tasks"
_Handler = Callable[[Request, Exception], Awaitable[Response]]
_KNOWN_QUERY = frozenset({"mode", "wait"})


class SubmitFastPath:
    def __init__(self, app: ASGIApp, *, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or route_path(scope) != _PATH:
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive)
        except ClientGoneError:
            return
        replay = replaying(body, receive)
        taken = _take(scope, body)
        if taken is None:
            await self.app(scope, replay, send)
            return
        request_body, wait = taken
        scope["route"] = SUBMIT_ROUTE
        request = Request(scope, replay)
        try:
            principal = await authorize(request, self.gateway, SUBMITTERS)
            response: Response = await accept(
                self.gateway,
                request,
                principal,
                request_body,
                mode="async",
                wait=wait,
                idempotency_key=request.headers.get("idempotency-key"),
            )
        except Exception as exc:
            handled_response = await handled(request, exc)
            if handled_response is None:
                raise
            response = handled_response
        await response(scope, replay, send)


def _take(scope: Scope, body: bytes) -> tuple[SubmitTaskRequest, float | None] | None:
    """The parsed body and ``wait`` of a request the fast path can serve, or None to leave it to the route."""
    mode: str | None = None
    wait: float | None = None
    for key, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
        if key not in _KNOWN_QUERY:
            return None
        if key == "mode":
            mode = value
        else:
            try:
                wait = float(value)
            except ValueError:
                return None
            if not math.isfinite(wait) or wait < 0:
                return None
    if mode not in (None, "async", "sync"):
        return None
    content_type = ""
    for name, header in scope["headers"]:
        if name == b"content-type":
            content_type = header.decode("latin-1").split(";", 1)[0].strip().lower()
            break
    if content_type != "application/json":
        return None
    try:
        request_body = SubmitTaskRequest.model_validate_json(body)
    except (ValidationError, ProblemError, ValueError):
        return None  # the route answers with the error, as for any request
    if (mode or request_body.mode or "async") != "async":
        return None  # a sync submission waits for its result anyway; the route serves it
    return request_body, wait
