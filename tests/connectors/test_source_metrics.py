"""A consumer process serves its connector metrics over HTTP: the only process that sets consumer lag and message
outcomes, so the Connectors dashboard and the lag and dead-letter alerts read them from its /metrics (the chart's
PodMonitor or annotations point Prometheus at the port the Connector operator gives it)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiplane.modelserver import free_port
from engine import Engine
from tests.connectors.kafkaio import produce
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually

REPO = Path(__file__).resolve().parents[2]
AIPLANE = Path(sys.executable).with_name("aiplane")
# The plain runtime and the governed entrypoint (without a namespace it enforces nothing, and needs no cluster).
COMMANDS = {
    "python-m": [sys.executable, "-m", "connectors.kafka", "source"],
    "aiplane": [str(AIPLANE), "kafka-source"],
}


def samples(text: str, name: str, connector: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The ``name`` samples of ``connector``, by their other labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("connector") == connector:
                found[tuple(sorted((k, v) for k, v in sample.labels.items() if k != "connector"))] = sample.value
    return found


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_a_consumer_serves_its_lag_and_outcomes_on_its_metrics_port(
    command: list[str], kafka: Kafka, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    engine = Engine(db_url, data_dir=tmp_path / "data")
    engine.register_workflow("claims", {"steps": [{"name": "noop", "type": "rules", "rules": {"set": {"x": "1"}}}]})
    engine.close()
    topic = kafka.new_topic(partitions=2, prefix="metrics-in")
    produce(kafka.bootstrap_servers, topic, [{"claimId": f"C-{n}"} for n in range(10)])
    connector = f"metrics-{uuid.uuid4().hex[:6]}"
    spec = {"bootstrapServers": kafka.bootstrap_servers, "topic": topic, "workflow": "claims"}
    port = free_port()
    log = tmp_path / "source.log"
    args = [
        "--connector", connector, "--tenant", "acme", "--spec", json.dumps(spec),
        "--db-url", db_url, "--data-dir", str(tmp_path / "data"),
        "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
    ]  # fmt: skip
    process = subprocess.Popen(
        [*command, *args],
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:

        def scraped() -> None:
            assert process.poll() is None, log.read_text()
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            outcomes = samples(text, "aiplane_connector_messages_total", connector)
            assert outcomes.get((("outcome", "accepted"),)) == 10, outcomes
            lag = samples(text, "aiplane_connector_consumer_lag_messages", connector)
            assert lag == {(("partition", "0"), ("topic", topic)): 0, (("partition", "1"), ("topic", topic)): 0}

        assert_eventually(scraped, timeout=120, interval=0.5, retry_on=(AssertionError, httpx.HTTPError))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
