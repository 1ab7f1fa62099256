"""HTTP calls of model and connector steps: idempotency and trace headers, timeouts, error classification,
and the retry budget and circuit breaker in front of every downstream."""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from engine.errors import StepError
from engine.executors.base import StepContext
from engine.resilience import Resilience
from engine.tracing import inject_headers

# Error kinds of HTTP statuses, as ``retry.nonRetryable`` names them.
STATUS_KINDS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    409: "Conflict",
    413: "PayloadTooLarge",
    422: "ValidationError",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
TIMEOUT = "Timeout"
CONNECTION_ERROR = "ConnectionError"
INVALID_RESPONSE = "InvalidResponse"
USER_AGENT = "aiplane-engine/0.1"


def classify_status(status: int) -> tuple[str, bool]:
    """(kind, retryable) of an HTTP error status: 4xx are the caller's fault and not retried, except 408 and
    429 (the server asks us to come back); 5xx are the server's and retried."""
    kind = STATUS_KINDS.get(status, f"HTTP{status}")
    retryable = status >= 500 or status in (408, 429)
    return kind, retryable


def parse_retry_after(value: str | None, now: datetime | None = None) -> timedelta | None:
    """``Retry-After`` as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when - (now or datetime.now(UTC)), timedelta(0))


def endpoint_of(url: str) -> str:
    """The breaker's key: the URL without query or fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class HttpCaller:
    """Shared by the model and connector executors of one worker (httpx.Client is thread-safe and pools)."""

    def __init__(self, client: httpx.Client | None = None, resilience: Resilience | None = None) -> None:
        self.client = client or httpx.Client(follow_redirects=False)
        self.resilience = resilience or Resilience()

    def close(self) -> None:
        self.client.close()

    def call(
        self,
        ctx: StepContext,
        *,
        downstream: str,
        method: str,
        url: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float,
        guard: Guard | None = None,
    ) -> Any:
        """Send the request and return the response body (JSON decoded when JSON, else text).

        Raises ``StepError`` classified for retries, or ``StepDeferredError`` (circuit open / budget spent)
        before anything is sent. With a ``guard`` (the SSRF check), the URL and every redirect target pass it
        and the request goes to the address it returns; without one, redirects are not followed.
        """
        endpoint = endpoint_of(url)
        self.resilience.admit(downstream, endpoint, is_retry=ctx.is_retry)
        breaker = self.resilience.breaker(endpoint)
        sent = {
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            **(headers or {}),
            # Stable across retries of this step run: the downstream can deduplicate a repeated call.
            "Idempotency-Key": ctx.idempotency_key,
        }
        inject_headers(sent)
        target = Hop(method, url, body if method not in ("GET", "DELETE") else None, params, sent)
        for _ in range(MAX_REDIRECTS + 1):
            address = guard(target.url) if guard is not None else None
            request = self.client.build_request(
                target.method,
                target.url,
                json=target.body,
                params=target.params,
                headers=target.headers,
                timeout=httpx.Timeout(timeout),
            )
            if address is not None and request.url.scheme == "http":
                pin(request, address)
            try:
                # Never let the client follow redirects itself (an injected client may be set to): each hop has
                # to pass the guard first.
                response = self.client.send(request, follow_redirects=False)
            except httpx.TimeoutException as exc:
                breaker.record_failure()
                raise StepError(TIMEOUT, f"{method} {endpoint} took longer than {timeout:g}s", retryable=True) from exc
            except httpx.TransportError as exc:
                breaker.record_failure()
                raise StepError(CONNECTION_ERROR, f"{method} {endpoint} failed: {exc}", retryable=True) from exc
            if guard is None or not response.has_redirect_location:
                break
            target = target.redirected(response)
            response.close()
        else:
            raise StepError(
                TOO_MANY_REDIRECTS, f"{method} {endpoint} redirected more than {MAX_REDIRECTS} times", retryable=False
            )
        if response.status_code >= 500:
            breaker.record_failure()
        else:
            # Any non-5xx answer shows the endpoint is up; a 4xx is about our request, not its health.
            breaker.record_success()
        if response.status_code >= 300:
            kind, retryable = classify_status(response.status_code)
            detail = response.text[:500]
            if response.is_redirect:
                detail = f"redirect to {response.headers.get('Location')!r}, which is not followed here"
            raise StepError(
                kind,
                f"{method} {endpoint} answered {response.status_code}: {detail}",
                retryable=retryable,
                status=response.status_code,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        return decode_body(response)


#: Checks a URL before it is called; returns the address to connect to (None: resolve as usual) or raises.
Guard = Callable[[str], str | None]
MAX_REDIRECTS = 5
TOO_MANY_REDIRECTS = "TooManyRedirects"
# Headers that may follow a redirect to another origin: the caller's own (credentials from Secrets) may not.
_CROSS_ORIGIN_SAFE = frozenset({"user-agent", "accept", "idempotency-key", "traceparent", "tracestate"})


@dataclass(frozen=True)
class Hop:
    """One request of a call that may be redirected."""

    method: str
    url: str
    body: Any
    params: Mapping[str, str] | None
    headers: Mapping[str, str]

    def redirected(self, response: httpx.Response) -> Hop:
        """The request a redirect asks for, as browsers and httpx make it: 303 (and 301/302 after a POST) turn into
        a body-less GET, 307/308 repeat the request; credentials stay behind when the origin changes."""
        location = httpx.URL(self.url).join(response.headers["Location"])
        method, body = self.method, self.body
        if (response.status_code == 303 and method != "HEAD") or (
            response.status_code in (301, 302) and method == "POST"
        ):
            method, body = "GET", None
        headers = self.headers
        if httpx.URL(self.url).netloc != location.netloc or httpx.URL(self.url).scheme != location.scheme:
            headers = {k: v for k, v in headers.items() if k.lower() in _CROSS_ORIGIN_SAFE}
        # The query parameters were made part of the URL the server answered; the Location replaces them.
        return Hop(method, str(location), body, None, headers)


def pin(request: httpx.Request, address: str) -> None:
    """Connect to ``address`` (checked by the guard) instead of resolving the host again; the Host header stays.

    Plain HTTP only: over HTTPS a rebound name fails the certificate check anyway, and pinning there would let the
    pool reuse one host's TLS connection (its certificate, its SNI) for another host on the same address.
    """
    request.url = request.url.copy_with(host=address)


def decode_body(response: httpx.Response) -> Any:
    if not response.content:
        return None
    content_type = response.headers.get("Content-Type", "")
    if "json" in content_type:
        try:
            return response.json()
        except json.JSONDecodeError as exc:
            raise StepError(
                INVALID_RESPONSE, f"response is not valid JSON though labelled {content_type}", retryable=False
            ) from exc
    return response.text
