"""HTTP calls of model and connector steps: idempotency and trace headers, timeouts, error classification,
and the retry budget and circuit breaker in front of every downstream."""

from __future__ import annotations

import email.utils
import json
from collections.abc import Mapping
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
    ) -> Any:
        """Send the request and return the response body (JSON decoded when JSON, else text).

        Raises ``StepError`` classified for retries, or ``StepDeferredError`` (circuit open / budget spent)
        before anything is sent.
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
        try:
            response = self.client.request(
                method,
                url,
                json=body if method not in ("GET", "DELETE") else None,
                params=params,
                headers=sent,
                timeout=httpx.Timeout(timeout),
            )
        except httpx.TimeoutException as exc:
            breaker.record_failure()
            raise StepError(TIMEOUT, f"{method} {endpoint} took longer than {timeout:g}s", retryable=True) from exc
        except httpx.TransportError as exc:
            breaker.record_failure()
            raise StepError(CONNECTION_ERROR, f"{method} {endpoint} failed: {exc}", retryable=True) from exc
        if response.status_code >= 500:
            breaker.record_failure()
        else:
            # Any non-5xx answer shows the endpoint is up; a 4xx is about our request, not its health.
            breaker.record_success()
        if response.status_code >= 300:
            kind, retryable = classify_status(response.status_code)
            raise StepError(
                kind,
                f"{method} {endpoint} answered {response.status_code}: {response.text[:500]}",
                retryable=retryable,
                status=response.status_code,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        return decode_body(response)


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
