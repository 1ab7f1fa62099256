"""Trace export for the processes the chart runs, configured by OpenTelemetry's standard environment variables.

With ``OTEL_TRACES_EXPORTER=otlp`` (the chart sets it when ``tracing.otlpEndpoint`` is given) the process installs a
TracerProvider that batches its spans to ``OTEL_EXPORTER_OTLP_ENDPOINT`` over OTLP/HTTP; the service name comes
from ``OTEL_SERVICE_NAME`` and the sampler from ``OTEL_TRACES_SAMPLER``/``_ARG``, which the SDK reads itself. Any
other value (or none) leaves tracing as it was: spans still feed the gateway's ``/v1/tasks/{id}/trace``.

Since a task's spans in the worker continue the trace of the request that submitted it (``engine.tracing``), the
gateway's and the workers' spans of one task arrive at the collector under one trace id.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

SUPPORTED_PROTOCOL = "http/protobuf"


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something this process cannot export; the message says what to change."""


def configure_from_env(default_service: str, environ: dict[str, str] | None = None) -> TracerProvider | None:
    """Install an exporting TracerProvider when the environment asks for OTLP; returns it (None otherwise)."""
    env = os.environ if environ is None else environ
    exporters = {name.strip() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()}
    if "otlp" not in exporters:
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", SUPPORTED_PROTOCOL
    )
    if protocol != SUPPORTED_PROTOCOL:
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: aiplane exports OTLP over HTTP "
            f"({SUPPORTED_PROTOCOL}); point it at the collector's HTTP port (4318)"
        )
    # Imported here: only processes that export pay for the exporter's imports.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    service = env.get("OTEL_SERVICE_NAME") or default_service
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider
