"""Pure ASGI middlewares (no BaseHTTPMiddleware: it costs a task and a copy per request on the predict path).

``TelemetryMiddleware``: the request-duration histogram by route template, method and status, and one
structured access-log line per request. ``BodyLimitMiddleware``: bodies larger than the limit get 413, whether
they announce their length or stream it chunked.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import PROBLEM_BASE, PROBLEM_MEDIA_TYPE
from api.telemetry import REQUEST_DURATION, access_log

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class TelemetryMiddleware:
    def __init__(self, app: ASGIApp, *, log_requests: bool = True) -> None:
        self.app = app
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            duration = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None)
            route = route if isinstance(route, str) else "unmatched"
            method = scope["method"] if scope["method"] in _KNOWN_METHODS else "OTHER"
            REQUEST_DURATION.labels(route, method, str(status)).observe(duration)
            if self.log_requests and access_log.isEnabledFor(20):
                state: dict[str, Any] = scope.get("state") or {}
                access_log.info(
                    "%s %s %s",
                    method,
                    route,
                    status,
                    extra={
                        "method": method,
                        "route": route,
                        "path": scope.get("path", ""),
                        "status": status,
                        "duration_s": round(duration, 6),
                        "tenant": state.get("tenant"),
                        "principal": state.get("principal"),
                        "task_id": state.get("task_id"),
                    },
                )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: int | None = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await _problem(scope, send, 400, "bad-request", "the Content-Length header is not a number")
                    return
                break
        if length is not None:
            if length > self.max_bytes:
                await self._too_large(scope, send)
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked, or no body): read the body up front, up to the limit, then replay it.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._too_large(scope, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        await _problem(
            scope,
            send,
            413,
            "payload-too-large",
            f"the request body is larger than {self.max_bytes} bytes; send large documents by reference",
        )


async def _problem(scope: Scope, send: Send, status: int, slug: str, detail: str) -> None:
    titles = {400: "Bad Request", 413: "Content Too Large"}
    body = json.dumps(
        {
            "type": PROBLEM_BASE + slug,
            "title": titles.get(status, "Error"),
            "status": status,
            "detail": detail,
            "instance": scope.get("path", ""),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
