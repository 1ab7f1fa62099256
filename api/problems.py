"""RFC 9457 problem details: the one shape of every error the gateway returns.

``type`` is a URI ``https://aiplane.io/problems/<slug>``; ``detail`` says what to fix; ``errors`` names the
offending fields (``field`` is a dotted path such as ``input.claimId`` or ``items[0].name``, ``location`` says
whether it is in the body, the query, a header or the path). Extension members (``taskId``, ``key``, ...) are
camelCase like the rest of the API.

Handlers are installed for the gateway's own ``ProblemError``, FastAPI's request validation, Starlette's HTTP
exceptions (404/405 from routing included), the engine's errors, the store being unreachable, and a last-resort
handler for everything else, so a client only ever sees ``application/problem+json``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api import floods
from engine import EngineError

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://aiplane.io/problems/"

log = logging.getLogger("aiplane.gateway")


class FieldError(BaseModel):
    """One offending field of a request."""

    field: str = Field(description="Dotted path of the field, e.g. input.claimId, workflow.name or limit.")
    location: str = Field(default="body", description="Where the field is: body, query, header or path.")
    message: str = Field(description="What is wrong with it and what is expected.")


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI that identifies the kind of problem.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong in this request, and what to do about it.")
    instance: str | None = Field(default=None, description="The request path.")
    errors: list[FieldError] | None = Field(default=None, description="The offending fields, when there are any.")


class ProblemError(Exception):
    """Raised by the gateway's own code to answer with a problem document."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        title: str | None = None,
        errors: Sequence[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.title = title
        self.errors = list(errors) if errors else None
        self.headers = dict(headers or {})
        self.extensions = extensions


def field_error(field: str, message: str, location: str = "body") -> FieldError:
    return FieldError(field=field, message=message, location=location)


def problem_response(
    request: Request | None,
    status: int,
    slug: str,
    detail: str,
    *,
    title: str | None = None,
    errors: Sequence[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title or _title(status),
        "status": status,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.url.path
    if errors:
        body["errors"] = [e.model_dump() for e in errors]
    for key, value in (extensions or {}).items():
        name = to_camel(key)
        if name not in body and _json_scalar(value):
            body[name] = value
    return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_MEDIA_TYPE)


def format_loc(parts: Iterable[str | int]) -> str:
    """``("input", "items", 0, "name")`` as ``input.items[0].name``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


# ---------------------------------------------------------------- handlers


_STATUS_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-failed",
    429: "too-many-requests",
    503: "unavailable",
}

_LOCATIONS = {"body", "query", "header", "path", "cookie"}


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        request,
        exc.status,
        exc.slug,
        exc.detail,
        title=exc.title,
        errors=exc.errors,
        headers=exc.headers,
        extensions=exc.extensions,
    )


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors: list[FieldError] = []
    for error in exc.errors():
        loc = list(error.get("loc", ()))
        location = str(loc.pop(0)) if loc and loc[0] in _LOCATIONS else "body"
        if error.get("type") == "json_invalid":
            return problem_response(
                request,
                400,
                "malformed-body",
                f"the request body is not valid JSON ({error.get('msg', 'invalid JSON')}); send a JSON object",
                errors=[field_error("body", str(error.get("msg", "invalid JSON")))],
            )
        errors.append(field_error(format_loc(loc) or location, str(error.get("msg", "invalid value")), location))
    names = ", ".join(sorted({e.field for e in errors})) or "the request"
    return problem_response(
        request,
        422,
        "validation-failed",
        f"the request is invalid; fix these fields: {names}",
        errors=errors,
    )


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else _title(status)
    if status == 404:
        detail = f"there is no resource at {request.url.path}; check the path against /openapi.json"
    elif status == 405:
        allowed = _allowed_methods(request)
        detail = f"{request.method} is not allowed on {request.url.path}; use one of: {', '.join(allowed)}"
        headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
        return problem_response(request, status, _STATUS_SLUGS[405], detail, headers=headers)
    elif status == 400 and detail == "There was an error parsing the body":
        detail = "the request body could not be parsed; send a JSON object"
    return problem_response(
        request, status, _STATUS_SLUGS.get(status, f"http-{status}"), detail, headers=exc.headers or None
    )


async def _on_engine_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EngineError)
    fields = dict(exc.fields)
    errors = None
    field = fields.pop("field", None)
    if isinstance(field, str):
        errors = [field_error(field, exc.detail, "header" if field == "Idempotency-Key" else "body")]
    headers = {"Retry-After": "1"} if exc.http_status == 409 and exc.type.startswith("idempotency") else None
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:  # a quota: come back when tasks may have finished
        headers = {"Retry-After": str(retry_after)}
    if exc.type == "quota-exceeded" and isinstance(fields.get("tenant"), str):
        limit, priority = fields.get("limit"), fields.get("priority")
        bucket = "tasks-in-flight" + (f"/{priority}" if priority else "")  # a priority class's quota, or all's
        await floods.refused(request.app.state.gateway, fields["tenant"], exc.type, bucket, exc.detail, limit=limit)
    if exc.http_status >= 500:
        log.error("engine error", exc_info=exc, extra={"route": _route(request)})
    return problem_response(
        request, exc.http_status, exc.type, exc.detail, errors=errors, headers=headers, extensions=fields
    )


async def _on_store_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("store unavailable: %s", exc, extra={"route": _route(request)})
    return problem_response(
        request,
        503,
        "store-unavailable",
        "the task store is unreachable or busy; retry the request shortly",
        headers={"Retry-After": "1"},
    )


async def _on_bad_data(request: Request, exc: Exception) -> JSONResponse:
    log.warning("store refused a value: %s", exc, extra={"route": _route(request)})
    return problem_response(
        request,
        422,
        "unstorable-value",
        "the store refused a value of this request (e.g. a NUL character in an id); remove it and retry",
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc, extra={"route": _route(request)})
    return problem_response(
        request,
        500,
        "internal-error",
        "the gateway failed to process this request; this is a bug in aiplane, please report it",
    )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's Allow names only the first route's)."""
    allowed = []
    for method in ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(EngineError, _on_engine_error)
    app.add_exception_handler(DataError, _on_bad_data)
    app.add_exception_handler(OperationalError, _on_store_error)
    app.add_exception_handler(DBAPIError, _on_store_error)
    app.add_exception_handler(Exception, _on_unexpected)


# ---------------------------------------------------------------- OpenAPI


PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}

_DESCRIPTIONS = {
    400: "Malformed request (invalid JSON, an Idempotency-Key longer than 255 characters).",
    401: "Missing or unknown API key.",
    403: "The API key's roles do not allow this.",
    404: "Not found (or owned by another tenant).",
    409: "Conflict: the request does not apply to the current state, or its Idempotency-Key is in flight.",
    413: "The request body is larger than the gateway accepts.",
    422: "The request is well-formed but invalid; ``errors`` names the fields.",
    429: "Over a rate limit (rate-limited) or the tenant's quota of tasks in flight (quota-exceeded); "
    "Retry-After says when to try again.",
    502: "The upstream model failed or could not be reached.",
    503: "A dependency (the store, a model) is unavailable; retry later.",
    504: "The upstream model did not answer in time.",
}


# Any route may answer these: a body that cannot be read or is too large, the store being unavailable.
ALWAYS = (400, 413, 503)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status (and those in ``ALWAYS``) documented as a problem document."""
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, _title(status)),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}},
        }
        for status in sorted({*statuses, *ALWAYS})
    }


def problem_components() -> dict[str, Any]:
    """The ``Problem`` and ``FieldError`` schemas for ``components.schemas``."""
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {"Problem": schema, **defs}
