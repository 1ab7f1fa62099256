"""``aiplane worker`` with ``AIPLANE_KAFKA_BOOTSTRAP_SERVERS`` (the chart's ``kafka.bootstrapServers``): its outbox
relay publishes the task events to Kafka, where a consumer outside the process reads them; without it, none."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiplane.components import KAFKA_BOOTSTRAP_ENV, _kafka_bus
from aiplane.processes import stop_process_group
from connectors.kafka import DEFAULT_EVENTS_TOPIC, KafkaBus
from connectors.kafka.clients import ensure_topics
from engine import Engine, Event
from engine.bus import Deduplicator
from engine.clock import new_id
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually

AIPLANE = Path(sys.executable).with_name("aiplane")
SPEC = {"steps": [{"name": "decide", "type": "rules", "rules": {"set": {"large": "input.amount > 1000.0"}}}]}


def test_no_bootstrap_servers_no_kafka_bus() -> None:
    assert _kafka_bus({}) is None
    assert _kafka_bus({KAFKA_BOOTSTRAP_ENV: "  "}) is None


def test_a_worker_publishes_its_tasks_events_to_the_chart_s_kafka(kafka: Kafka, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    workflow = f"bus-{uuid.uuid4().hex[:8]}"
    seen: dict[str, set[str]] = {}

    def on_event(event: Event) -> None:
        seen.setdefault(event.task_id or "", set()).add(event.type)

    # On a fresh broker nothing has published to the default topic yet, and a subscriber without a group needs its
    # partitions now; the worker's first publish would create it only later.
    ensure_topics(kafka.bootstrap_servers, [DEFAULT_EVENTS_TOPIC])
    watcher = KafkaBus(kafka.bootstrap_servers)
    watcher.subscribe(Deduplicator(on_event))
    env = {**os.environ, KAFKA_BOOTSTRAP_ENV: kafka.bootstrap_servers, "AIPLANE_DATA_DIR": str(tmp_path)}
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [str(AIPLANE), "worker", "--db", db_url],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stop_process_group signals its group, not the test run
        )
    try:
        with Engine(db_url) as engine:
            engine.register_workflow(workflow, SPEC)
            task = engine.submit("acme", workflow, {"amount": 2500.0})
            assert_eventually(
                lambda: {"task.submitted", "task.completed"} <= seen.get(task.id, set()), timeout=60, interval=0.1
            )
    finally:
        stop_process_group(worker)
        watcher.close()
    assert watcher.topic == DEFAULT_EVENTS_TOPIC


def test_a_bus_made_while_no_broker_answers_fails_its_sends_not_its_start() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: connections are refused
        bus = KafkaBus(nobody, ack_timeout=1.0)
    event = Event(
        id=new_id(),
        seq=1,
        task_id=None,
        tenant="acme",
        type="task.submitted",
        payload={},
        created_at=datetime.now(UTC),
        published_at=None,
    )
    try:
        assert bus.publish_many([event]) == 0  # not acknowledged: the relay keeps it in the outbox
    finally:
        bus.close()
