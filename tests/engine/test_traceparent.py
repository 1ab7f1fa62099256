"""Stored traceparents: formatted and parsed as the W3C propagator would, without the global propagators."""

from __future__ import annotations

import random

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from engine.tracing import context_from_traceparent, current_traceparent

W3C = TraceContextTextMapPropagator()


def _span_context(context: object) -> SpanContext:
    return trace.get_current_span(context).get_span_context()  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(20))
def test_round_trip_agrees_with_the_w3c_propagator(seed: int) -> None:
    rng = random.Random(seed)
    parent = SpanContext(
        rng.getrandbits(128) or 1, rng.getrandbits(64) or 1, is_remote=False, trace_flags=TraceFlags(seed % 2)
    )
    with trace.use_span(NonRecordingSpan(parent)):
        traceparent = current_traceparent()
        carrier: dict[str, str] = {}
        W3C.inject(carrier)
    assert traceparent == carrier["traceparent"]
    assert _span_context(context_from_traceparent(traceparent)) == _span_context(W3C.extract(carrier))


def test_no_active_span_gives_no_traceparent() -> None:
    assert current_traceparent() is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero span id
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # uppercase is not W3C
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
    ],
)
def test_invalid_traceparents_name_no_parent(value: str | None) -> None:
    assert context_from_traceparent(value) is None
    if value:  # the W3C propagator agrees: no valid parent
        assert not _span_context(W3C.extract({"traceparent": value})).is_valid
