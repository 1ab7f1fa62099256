"""OTLP export as the chart configures it (tracing.otlpEndpoint): a gateway and a worker, separate processes,
send their spans of one task to a collector under the trace id of the request that submitted it, the worker's
call of a real model upstream included (and the upstream gets that trace id in its traceparent)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from aiplane.modelserver import free_port
from aiplane.tracing import TracingConfigError, configure_from_env
from api import create_api_key
from engine import Engine
from tests.fixtures.downstream import Downstream
from tests.fixtures.polling import assert_eventually
from tests.helm.chart import objects, render

AIPLANE = Path(sys.executable).with_name("aiplane")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
WORKFLOW = {
    "steps": [
        {"name": "decide", "type": "rules", "rules": {"set": {"large": "input.amount > 1000"}}},
        {"name": "classify", "type": "model", "model": {"name": "triage"}},
    ]
}
REPO = Path(__file__).resolve().parents[2]


class Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver that keeps (service, trace id, span name) of every span it gets."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[tuple[str, str, str]] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf":
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.server.spans += [
                        (attributes.get("service.name", ""), span.trace_id.hex(), span.name) for span in scope.spans
                    ]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _chart_tracing_env() -> dict[str, str]:
    """The OTEL_* variables the chart gives the gateway, with tracing.otlpEndpoint set."""
    docs = objects(render("--set", "tracing.otlpEndpoint=http://collector:4318"))
    gateway = next(doc for doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"].endswith("gateway"))
    env = gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    return {item["name"]: item["value"] for item in env if item["name"].startswith("OTEL_")}


@pytest.fixture
def upstream() -> Iterator[Downstream]:
    """The model: a real HTTP server that answers and keeps the requests' headers."""
    server = Downstream()
    yield server
    server.close()


def test_one_trace_from_gateway_to_worker(collector: Collector, upstream: Downstream, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'engine.db'}"
    engine = Engine(db, data_dir=tmp_path)
    engine.register_workflow("triage", WORKFLOW)
    key = create_api_key(engine, "t1", "alice", ["submitter"])
    engine.close()

    chart_env = _chart_tracing_env()
    assert chart_env["OTEL_TRACES_EXPORTER"] == "otlp"
    gateway_port = free_port()
    base = {
        **os.environ,
        **chart_env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "AIPLANE_DATABASE_URL": db,
        "AIPLANE_DATA_DIR": str(tmp_path),
        "AIPLANE_LOG_FORMAT": "text",
    }
    log = (tmp_path / "processes.log").open("wb")
    models = {"triage": [{"version": "v1", "url": upstream.url("/triage"), "weight": 100}]}
    commands = {
        "gateway": [str(AIPLANE), "gateway", "--host", "127.0.0.1", "--port", str(gateway_port)],
        # `aiplane worker` with models from the command line (it finds them only in a cluster otherwise).
        "worker": [sys.executable, "-m", "tests.helm.traced_worker", db, str(tmp_path), json.dumps(models)],
    }
    processes = [
        subprocess.Popen(
            command,
            env={**base, "OTEL_SERVICE_NAME": f"aiplane-{component}", "PYTHONPATH": str(REPO)},
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for component, command in commands.items()
    ]
    url = f"http://127.0.0.1:{gateway_port}"
    try:

        def ready() -> None:
            assert all(p.poll() is None for p in processes), (tmp_path / "processes.log").read_text()
            httpx.get(f"{url}/readyz", timeout=2).raise_for_status()

        assert_eventually(ready, timeout=240, retry_on=(AssertionError, httpx.HTTPError))
        response = httpx.post(
            f"{url}/v1/tasks?mode=sync&wait=30",
            json={"workflow": {"name": "triage"}, "input": {"amount": 5000}},
            headers={"Authorization": f"Bearer {key}", "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
            timeout=40,
        )
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "succeeded", response.text

        def both_exported() -> None:
            services = {service for service, trace_id, _ in collector.spans if trace_id == TRACE_ID}
            assert services == {"aiplane-gateway", "aiplane-worker"}, collector.spans

        assert_eventually(both_exported, timeout=30)
        names = {name for _, trace_id, name in collector.spans if trace_id == TRACE_ID}
        assert "aiplane.engine.step" in names

        # The model call is in the same trace, from the worker, and the model got the trace id.
        def model_call_exported() -> None:
            calls = [(service, name) for service, trace_id, name in collector.spans if trace_id == TRACE_ID]
            assert ("aiplane-worker", "aiplane.engine.model_call") in calls, collector.spans

        assert_eventually(model_call_exported, timeout=30)
        (call,) = upstream.calls["/triage/predict"]
        assert call.headers["traceparent"].split("-")[1] == TRACE_ID
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)


def test_grpc_is_refused_with_what_to_change() -> None:
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    with pytest.raises(TracingConfigError, match="4318"):
        configure_from_env("aiplane-gateway", env)
    assert configure_from_env("aiplane-gateway", {"OTEL_TRACES_EXPORTER": "none"}) is None
