"""Every PromQL expression of the dashboards and alerts parses in a real Prometheus and names only metrics that
aiplane exports: read from the /metrics of a running gateway and worker (on PostgreSQL, as the chart runs them)
and from what a Kafka source's and an operator's processes register (they need a broker or a cluster to run;
their registries do not). A task run through them shows up in Prometheus as the Overview dashboard reads it, and a
real Kafka source's consumer lag as the Connectors dashboard reads it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aiplane.modelserver import free_port
from api import create_api_key
from engine import Engine
from tests.connectors.kafkaio import produce
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually
from tests.fixtures.prometheus import Prometheus
from tests.helm.promql import EXTERNAL, dashboard_expressions, exported_series, expressions, metric_names

AIPLANE = Path(sys.executable).with_name("aiplane")


def test_name_extraction() -> None:
    expr = 'sum by (model, le) (rate(aiplane_x_bucket{outcome=~"a|b"}[5m])) / on (model) aiplane_y > bool 0.5'
    assert metric_names(expr) == {"aiplane_x_bucket", "aiplane_y"}
    assert metric_names("max(delta(aiplane_z[30m])) > 0 and max(aiplane_z) > 10") == {"aiplane_z"}
    assert metric_names("sum by (c) (aiplane_p) / ignoring (c) group_left sum(aiplane_p)") == {"aiplane_p"}


def test_every_panel_and_alert_selects_a_metric() -> None:
    for name, expr in expressions().items():
        assert metric_names(expr), name


@pytest.fixture
def running(pg_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A gateway and a worker as the chart runs them: addresses of their /metrics."""
    gateway_port, worker_port = free_port(), free_port()
    env = {
        **os.environ,
        "AIPLANE_DATABASE_URL": pg_url,
        "AIPLANE_DATA_DIR": str(tmp_path),
        "AIPLANE_LOG_FORMAT": "text",
    }
    log = (tmp_path / "processes.log").open("wb")
    commands = [
        [str(AIPLANE), "gateway", "--host", "127.0.0.1", "--port", str(gateway_port)],
        [str(AIPLANE), "worker", "--metrics-host", "127.0.0.1", f"--metrics-port={worker_port}"],
    ]
    processes = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT) for command in commands
    ]
    addresses = (f"127.0.0.1:{gateway_port}", f"127.0.0.1:{worker_port}")
    try:

        def up() -> None:
            for process, address in zip(processes, addresses, strict=True):
                assert process.poll() is None, (tmp_path / "processes.log").read_text()
                httpx.get(f"http://{address}/metrics", timeout=2).raise_for_status()

        assert_eventually(up, timeout=240, retry_on=(AssertionError, httpx.HTTPError))
        yield addresses
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)


def _registered_series(*modules: str) -> set[str]:
    """What a process that imports ``modules`` registers."""
    code = f"import {', '.join(modules)}, prometheus_client; print(prometheus_client.generate_latest().decode())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return exported_series(out.stdout)


def _audit_series(tmp_path: Path) -> set[str]:
    """What `aiplane audit verify --metrics-file` writes (a scheduled verify's verdict, via a textfile collector)."""
    db = f"sqlite:///{tmp_path / 'audit.db'}"
    Engine(db, data_dir=tmp_path).close()  # a migrated store, with an empty audit log
    metrics = tmp_path / "audit.prom"
    proc = subprocess.run(
        [str(AIPLANE), "audit", "verify", "--database", db, "--metrics-file", str(metrics)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return exported_series(metrics.read_text())


def test_expressions_parse_and_name_only_exported_metrics(
    running: tuple[str, str], prometheus: Prometheus, tmp_path: Path
) -> None:
    exported = _registered_series("connectors.kafka.metrics", "operators.metrics") | _audit_series(tmp_path)
    exported |= EXTERNAL.keys()
    for address in running:
        exported |= exported_series(httpx.get(f"http://{address}/metrics", timeout=10).text)
    assert "aiplane_gateway_request_duration_seconds_count" in exported
    assert "aiplane_engine_step_duration_seconds_bucket" in exported

    unknown = {name: sorted(metric_names(expr) - exported) for name, expr in expressions().items()}
    assert {name: missing for name, missing in unknown.items() if missing} == {}

    # Prometheus parses and evaluates each one over the live targets (a parse error is a 400).
    targets = [prometheus.scrape(address, job=f"aiplane-{i}") for i, address in enumerate(running)]
    try:
        for name, expr in expressions().items():
            response = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": expr}, timeout=10)
            assert response.status_code == 200, f"{name}: {response.text}"
            assert response.json()["status"] == "success", name
    finally:
        for target in targets:
            target.unlink()


def test_a_finished_task_reaches_prometheus_as_the_overview_reads_it(
    running: tuple[str, str], prometheus: Prometheus, pg_url: str, tmp_path: Path
) -> None:
    gateway, worker = running
    workflow = f"obs-{uuid.uuid4().hex[:8]}"
    engine = Engine(pg_url, data_dir=tmp_path / "submitter")
    try:
        engine.register_workflow(workflow, {"steps": [{"name": "set", "type": "rules", "rules": {"set": {"a": "1"}}}]})
        key = create_api_key(engine, "acme", "alice", ["submitter"])
    finally:
        engine.close()
    target = prometheus.scrape(worker, job="aiplane-worker-e2e")
    try:
        answer = httpx.post(
            f"http://{gateway}/v1/tasks",
            json={"workflow": {"name": workflow}, "input": {}},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert answer.status_code in (200, 201, 202), answer.text

        def counted() -> None:
            # The Overview's panels, narrowed to this workflow.
            finished = prometheus.query(
                f'sum by (outcome, path) (aiplane_engine_tasks_finished_total{{workflow="{workflow}"}})'
            )
            assert [(r["metric"], r["value"][1]) for r in finished] == [
                ({"outcome": "succeeded", "path": "automated"}, "1")
            ]
            latency = prometheus.query(
                f'sum(aiplane_engine_task_duration_seconds_count{{workflow="{workflow}",outcome="succeeded"}})'
            )
            assert [r["value"][1] for r in latency] == ["1"]

        assert_eventually(counted, timeout=120, interval=1.0)
    finally:
        target.unlink()


def test_consumer_lag_reaches_prometheus_as_the_connectors_dashboard_reads_it(
    kafka: Kafka, prometheus: Prometheus, tmp_path: Path
) -> None:
    """A Kafka source's own /metrics (``--metrics-port``, the port the chart's PodMonitor or annotations name):
    the only process that sets consumer lag and message outcomes."""
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    engine = Engine(db_url, data_dir=tmp_path / "data")
    engine.register_workflow("claims", {"steps": [{"name": "set", "type": "rules", "rules": {"set": {"a": "1"}}}]})
    engine.close()
    topic = kafka.new_topic(partitions=2, prefix="obs-in")
    produce(kafka.bootstrap_servers, topic, [{"claimId": f"C-{n}"} for n in range(5)])
    connector = f"obs-{uuid.uuid4().hex[:8]}"
    spec = {"bootstrapServers": kafka.bootstrap_servers, "topic": topic, "workflow": "claims"}
    port = free_port()
    log = tmp_path / "source.log"
    source = subprocess.Popen(
        [
            str(AIPLANE), "kafka-source", "--connector", connector, "--tenant", "acme", "--spec", json.dumps(spec),
            "--db-url", db_url, "--data-dir", str(tmp_path / "data"),
            "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
        ],
        cwd=tmp_path, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    target = prometheus.scrape(f"127.0.0.1:{port}", job="aiplane-kafka-source")
    panels = dashboard_expressions()
    lag = panels["connectors: Consumer lag per connector (A)"]
    try:

        def read_as_the_dashboard_does() -> None:
            assert source.poll() is None, log.read_text()
            # The panel's query; the other connectors' series (other tests' sources) are left out.
            assert {r["metric"]["connector"]: r["value"][1] for r in prometheus.query(lag)}.get(connector) == "0"
            accepted = prometheus.query(
                f'sum(aiplane_connector_messages_total{{connector="{connector}",outcome="accepted"}})'
            )
            assert [r["value"][1] for r in accepted] == ["5"]

        assert_eventually(read_as_the_dashboard_does, timeout=120, interval=1.0)
    finally:
        target.unlink()
        source.send_signal(signal.SIGTERM)
        assert source.wait(timeout=60) == 0, log.read_text()
