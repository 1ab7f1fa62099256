"""OpenTelemetry spans of the engine, and a span store keyed by task id for ``GET /v1/tasks/{id}/trace``.

Spans are named ``aiplane.engine.<operation>`` and carry ``aiplane.task.id``. A task's trace continues the
trace of the request that submitted it: the submitter's ``traceparent`` is stored with the task and becomes the
parent of every step span, so one trace shows the request, each step and each downstream call.
Without a configured TracerProvider (the app sets one up) spans are no-ops and nothing is propagated.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

TRACER_NAME = "aiplane.engine"
SPAN_SUBMIT = "aiplane.engine.submit"
SPAN_STEP = "aiplane.engine.step"
SPAN_MODEL_CALL = "aiplane.engine.model_call"
SPAN_CONNECTOR_CALL = "aiplane.engine.connector_call"
SPAN_RULES = "aiplane.engine.rules"
ATTR_TASK_ID = "aiplane.task.id"
ATTR_TENANT = "aiplane.tenant"
ATTR_WORKFLOW = "aiplane.workflow"
ATTR_STEP = "aiplane.step.name"
ATTR_STEP_TYPE = "aiplane.step.type"
ATTR_ATTEMPT = "aiplane.step.attempt"


_tracer: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    # Made once: get_tracer builds a new Tracer (and its scope) per call, which showed on the per-step and
    # per-submission paths. Made before a TracerProvider is installed, it is a proxy that follows the global
    # provider once the app or a test sets one.
    global _tracer  # noqa: PLW0603 - one per process, like the provider
    if _tracer is None:
        _tracer = trace.get_tracer(TRACER_NAME)
    return _tracer


def recording() -> bool:
    """Whether spans can be recorded at all: False while no TracerProvider is installed (every span would be a
    no-op), so a batch's thousand per-input spans can be skipped instead of made and thrown away."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def current_traceparent() -> str | None:
    """The W3C traceparent of the active span, or None when no span is recording.

    Formatted here rather than through the global propagators: what is stored with a task is always a W3C
    traceparent (whatever propagators the process has for HTTP), and this runs on every submission, where the
    composite propagator's context look-ups cost as much as the rest of the trace bookkeeping."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def inject_headers(headers: dict[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``) of the active span to outgoing HTTP headers."""
    propagate.inject(headers)


# W3C Trace Context, version 00: trace id, parent span id and flags, lowercase hex.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def context_from_traceparent(traceparent: str | None) -> otel_context.Context | None:
    """The remote parent a stored traceparent names (None: none, or not a valid W3C traceparent)."""
    if not traceparent:
        return None
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(match[3], 16)))
    return trace.set_span_in_context(NonRecordingSpan(parent))


class TaskSpanStore(SpanProcessor):
    """Keeps finished spans that carry ``aiplane.task.id``, grouped by task, for the most recent tasks.

    Install it on the app's TracerProvider (``provider.add_span_processor(store)``); it holds at most
    ``max_tasks`` tasks and ``max_spans_per_task`` spans each, forgetting the oldest tasks first. A deployment
    that exports to a tracing backend would read traces from there instead.
    """

    def __init__(self, max_tasks: int = 10_000, max_spans_per_task: int = 1_000) -> None:
        self.max_tasks = max_tasks
        self.max_spans_per_task = max_spans_per_task
        self._spans: OrderedDict[str, list[ReadableSpan]] = OrderedDict()
        self._lock = threading.Lock()

    def on_end(self, span: ReadableSpan) -> None:
        task_id = (span.attributes or {}).get(ATTR_TASK_ID)
        if not isinstance(task_id, str):
            return
        with self._lock:
            spans = self._spans.setdefault(task_id, [])
            self._spans.move_to_end(task_id)
            if len(spans) < self.max_spans_per_task:
                spans.append(span)
            while len(self._spans) > self.max_tasks:
                self._spans.popitem(last=False)

    def forget(self, task_ids: Iterable[str]) -> int:
        """Drop the spans of ``task_ids`` (a GDPR erasure); how many spans went."""
        with self._lock:
            return sum(len(self._spans.pop(task_id, ())) for task_id in task_ids)

    def spans(self, task_id: str) -> list[ReadableSpan]:
        with self._lock:
            return list(self._spans.get(task_id, ()))

    def trace(self, task_id: str) -> list[dict[str, Any]]:
        """The task's spans as plain dicts (name, ids, times, attributes, status), oldest first."""
        out = []
        for span in sorted(self.spans(task_id), key=lambda s: s.start_time or 0):
            ctx = span.get_span_context()
            out.append(
                {
                    "name": span.name,
                    "traceId": format(ctx.trace_id, "032x") if ctx else None,
                    "spanId": format(ctx.span_id, "016x") if ctx else None,
                    "parentSpanId": format(span.parent.span_id, "016x") if span.parent else None,
                    "startTimeUnixNano": span.start_time,
                    "endTimeUnixNano": span.end_time,
                    "attributes": dict(span.attributes or {}),
                    "status": span.status.status_code.name,
                }
            )
        return out
