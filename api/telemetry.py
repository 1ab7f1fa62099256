"""Spans, metrics and access logs of the gateway.

Spans are named ``aiplane.gateway.<operation>`` and continue the caller's W3C ``traceparent``. Those that change a
task (submit, cancel, replay, approve, reject) carry ``aiplane.task.id``, so the engine's ``TaskSpanStore`` files
them with the task's engine, step and model-call spans (the engine continues the trace from the submit span);
reads do not, so a client polling a task does not fill its trace. Metrics live in
prometheus-client's default registry, the one the engine registers in, so ``/metrics`` shows both.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram
from starlette.requests import HTTPConnection

from engine import ATTR_TASK_ID, TaskSpanStore
from engine.tracing import context_from_traceparent

TRACER_NAME = "aiplane.gateway"
ATTR_TENANT = "aiplane.tenant"

access_log = logging.getLogger("aiplane.gateway.access")

REQUEST_DURATION = Histogram(
    "aiplane_gateway_request_duration_seconds",
    "Time from request to response, by route template, method and status code.",
    ["route", "method", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
MODEL_CALL_DURATION = Histogram(
    "aiplane_gateway_model_call_duration_seconds",
    "Duration of synchronous model calls (POST /v1/models/{name}/predict) at the upstream, by the Model's "
    "namespace, model, version and outcome (ok, rejected, error, timeout, unreachable).",
    ["namespace", "model", "version", "outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
MODEL_PREDICTIONS = Counter(
    "aiplane_gateway_model_predictions_total",
    "Successful model answers by the Model's namespace, model, version and predicted class (the value of the "
    "answer's field named by the Model's spec.canary.analysis.predictionField); the canary analysis measures "
    "drift as the PSI of the canary's classes against the stable version's.",
    ["namespace", "model", "version", "class"],
)
IDEMPOTENT_REPLAYS = Counter(
    "aiplane_gateway_idempotent_replays_total",
    "Requests answered with the stored response of an earlier request with the same Idempotency-Key.",
)

_span_store: TaskSpanStore | None = None
_span_store_lock = threading.Lock()


_tracer: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    # Made once: get_tracer builds a new Tracer (with its scope) on every call, a sixth of the predict route's
    # own time. Made before a provider is installed, it is a proxy that follows the global provider once set.
    global _tracer  # noqa: PLW0603 - one per process, like the provider
    if _tracer is None:
        _tracer = trace.get_tracer(TRACER_NAME)
    return _tracer


def install_span_store() -> TaskSpanStore:
    """The process's ``TaskSpanStore``, attached to the global TracerProvider (installed if there is none).

    One per process: every app built in the process shares it, so a provider never collects the same span
    twice. ``aiplane`` may set up its own provider (with exporters) first; the store is added to it.
    """
    global _span_store  # noqa: PLW0603 - one store per process, like the TracerProvider it hangs off
    with _span_store_lock:
        if _span_store is None:
            provider = trace.get_tracer_provider()
            if not isinstance(provider, TracerProvider):
                provider = TracerProvider()
                trace.set_tracer_provider(provider)
                # set_tracer_provider refuses a second provider; use whatever is global now.
                provider = trace.get_tracer_provider()
            store = TaskSpanStore()
            if isinstance(provider, TracerProvider):
                provider.add_span_processor(store)
            _span_store = store
        return _span_store


@contextlib.contextmanager
def gateway_span(
    conn: HTTPConnection,
    operation: str,
    *,
    task_id: str | None = None,
    tenant: str | None = None,
    mask: Callable[[str], str] | None = None,
) -> Iterator[Span]:
    """A server span ``aiplane.gateway.<operation>`` continuing the request's ``traceparent``. ``mask``: applied
    to the text of an exception that ends the span (its exception event and status), whose message may quote
    personal data (a model's answer to a prediction)."""
    attributes: dict[str, Any] = {"http.route": _route(conn), "http.request.method": conn.scope.get("method", "")}
    if task_id is not None:
        attributes[ATTR_TASK_ID] = task_id
    if tenant is not None:
        attributes[ATTR_TENANT] = tenant
    parent = _parent(conn)
    with tracer().start_as_current_span(
        f"{TRACER_NAME}.{operation}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=mask is None,
        set_status_on_exception=mask is None,
    ) as span:
        if mask is None:
            yield span
            return
        try:
            yield span
        except BaseException as exc:
            # What the SDK records on its own, with the text masked (and no traceback: its frames quote it too).
            text = mask(str(exc))
            event = {"exception.type": type(exc).__qualname__, "exception.message": text, "exception.escaped": "True"}
            span.add_event("exception", event)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {text}"))
            raise


_PROPAGATED = ("traceparent", "tracestate", "baggage")


def _parent(conn: HTTPConnection) -> Any:
    """The caller's trace context, or None. Read into a small dict first: the propagators look headers up one by
    one, and each look-up in Starlette's headers scans them all."""
    headers = conn.headers
    traceparent = headers.get("traceparent")
    if traceparent is None:
        return None
    carrier = {"traceparent": traceparent}
    for name in _PROPAGATED[1:]:
        value = headers.get(name)
        if value is not None:
            carrier[name] = value
    if len(carrier) == 1 and _w3c_only(propagate.get_global_textmap()):
        # What the W3C propagators would make of a lone traceparent, without their per-request context look-ups.
        return context_from_traceparent(traceparent)
    return propagate.extract(carrier)


def _w3c_only(textmap: Any) -> bool:
    """Whether the process propagates W3C trace context and baggage only (the default)."""
    return set(textmap.fields) <= set(_PROPAGATED)


def mark_error(span: Span, description: str) -> None:
    span.set_status(Status(StatusCode.ERROR, description))


def _route(conn: HTTPConnection) -> str:
    route = conn.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
