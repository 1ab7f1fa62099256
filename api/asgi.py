"""ASGI helpers of the fast paths (``PredictFastPath``, ``SubmitFastPath``), which serve requests before routing."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope


class ClientGoneError(Exception):
    """The client went away before its whole body arrived: there is nobody to answer."""


def route_path(scope: Scope) -> str:
    """The request's path as the app's routes see it (without the root path a proxy mounts the app under)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def read_body(receive: Receive) -> bytes:
    """The whole request body; raises ``ClientGoneError`` on a disconnect."""
    message = await receive()
    if message["type"] != "http.request":
        raise ClientGoneError
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body  # the usual case: one message, no copy
    parts = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGoneError
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the already-read body once, then whatever the client sends next (a disconnect),
    so a request whose body was read can still be handed on to the app."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def handled(request: Request, exc: Exception) -> Response | None:
    """The app's answer to ``exc`` from its own exception handlers, as if a route had raised it (problem+json for
    ProblemError, 503 for an unavailable store, ...). None when only the last-resort handler would name it: re-raise
    it then, and Starlette's ServerErrorMiddleware answers 500 and logs it, as for a route."""
    handlers: Mapping[Any, Callable[[Request, Exception], Any]] = request.app.exception_handlers
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        handler = handlers.get(cls)
        if handler is not None:
            response = handler(request, exc)
            if inspect.isawaitable(response):
                response = await response
            assert isinstance(response, Response)
            return response
    return None
