"""Every PromQL expression of the dashboards and alerts parses in a real Prometheus and names only metrics that
aiplane exports: read from the /metrics of a running gateway and worker (on PostgreSQL, as the chart runs them)
and from what a Kafka source's process registers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from engine import Engine
from tests.fixtures.polling import assert_eventually
from tests.fixtures.prometheus import Prometheus
from tests.helm.chart import CHART

AIPLANE = Path(sys.executable).with_name("aiplane")
# Grafana's variables, as Grafana substitutes them before Prometheus sees the query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
# Series a metric family of each type exposes (prometheus-client's exposition).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
PROMQL_WORDS |= {"group_left", "group_right"}


def dashboard_expressions() -> dict[str, str]:
    found = {}
    for path in sorted((CHART / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found[f"{path.stem}: {panel['title']} ({target['refId']})"] = target["expr"]
    return found


def alert_expressions() -> dict[str, str]:
    groups = yaml.safe_load((CHART / "alerts" / "aiplane.rules.yaml").read_text())["groups"]
    return {rule.get("alert") or rule["record"]: rule["expr"] for group in groups for rule in group["rules"]}


def expressions() -> dict[str, str]:
    found = {name: expr for name, expr in dashboard_expressions().items()}
    found.update(alert_expressions())
    for variable, value in GRAFANA_VARIABLES.items():
        found = {name: expr.replace(variable, value) for name, expr in found.items()}
    return found


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects: identifiers left once strings, matchers, ranges and grouping
    clauses are gone, other than function calls and PromQL's keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if not match.group(2) and match.group(1).lower() not in PROMQL_WORDS:
            names.add(match.group(1))
    return names


def test_name_extraction() -> None:
    expr = 'sum by (model, le) (rate(aiplane_x_bucket{outcome=~"a|b"}[5m])) / on (model) aiplane_y > bool 0.5'
    assert metric_names(expr) == {"aiplane_x_bucket", "aiplane_y"}
    assert metric_names("max(delta(aiplane_z[30m])) > 0 and max(aiplane_z) > 10") == {"aiplane_z"}
    assert metric_names("sum by (c) (aiplane_p) / ignoring (c) group_left sum(aiplane_p)") == {"aiplane_p"}


def test_every_panel_and_alert_selects_a_metric() -> None:
    for name, expr in expressions().items():
        assert metric_names(expr), name


def exported_series(exposition: str) -> set[str]:
    series = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            # The text format names a counter's family with its _total (a labelled metric that has seen no
            # value yet shows only these lines, no samples).
            base = family.removesuffix("_total") if kind == "counter" else family
            series |= {base + suffix for suffix in SUFFIXES.get(kind, ("",))}
    return series


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def running(pg_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A gateway and a worker as the chart runs them: addresses of their /metrics."""
    gateway_port, worker_port = _free_port(), _free_port()
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


def _connector_series() -> set[str]:
    """What a Kafka source's process registers (it needs a broker to run; its registry does not)."""
    code = "import connectors.kafka.metrics, prometheus_client; print(prometheus_client.generate_latest().decode())"
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
    exported = _connector_series() | _audit_series(tmp_path)
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
