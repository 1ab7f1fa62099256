"""The broker goes away and comes back: the outbox keeps the events and drains afterwards, and a source loses and
duplicates nothing.

A broker of its own (``hack/kafka.sh`` under a private state dir), since the outage is made by stopping its JVM
with SIGSTOP and resuming it with SIGCONT: clients see a broker that accepts nothing, then the same broker again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from connectors.kafka import KafkaBus, KafkaSource, SourceSettings
from connectors.kafka.clients import ensure_topics
from crds.connector import KafkaSource as KafkaSourceSpec
from engine import Engine, Event, Task
from engine.bus import Deduplicator
from engine.store.schema import tasks
from tests.connectors.conftest import RULES_WORKFLOW, EngineFactory
from tests.connectors.kafkaio import committed, produce
from tests.fixtures.polling import assert_eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PrivateBroker:
    bootstrap_servers: str
    pid: int

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    state = tmp_path_factory.mktemp("private-kafka")
    env = {**os.environ, "AIPLANE_STATE_DIR": str(state)}
    script = ["bash", str(REPO / "hack" / "kafka.sh")]
    subprocess.run([*script, "up"], env=env, check=True, capture_output=True, timeout=600)
    try:
        output = subprocess.run([*script, "env"], env=env, check=True, capture_output=True, text=True).stdout
        pid = int((state / "kafka" / "kafka.pid").read_text())
        yield PrivateBroker(output.strip().partition("=")[2], pid)
    finally:
        os.kill(int((state / "kafka" / "kafka.pid").read_text()), signal.SIGCONT)
        subprocess.run([*script, "down"], env=env, check=False, capture_output=True, timeout=120)


def test_events_stay_in_the_outbox_while_the_broker_is_down_and_drain_afterwards(
    broker: PrivateBroker, make_engine: EngineFactory
) -> None:
    topic = f"events-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap_servers, [topic])
    bus = KafkaBus(broker.bootstrap_servers, topic=topic, ack_timeout=2.0)
    engine = make_engine(bus=bus)
    engine.register_workflow("wf", RULES_WORKFLOW)
    before = [engine.submit("acme", "wf", {"amount": n}) for n in range(5)]
    assert engine.relay.drain() == 5
    broker.pause()
    try:
        during = [engine.submit("acme", "wf", {"amount": n}) for n in range(10)]
        assert engine.relay.drain() == 0
    finally:
        broker.resume()
    assert all(e.published_at is None for task in during for e in engine.events(task.id))

    def drained() -> bool:
        engine.relay.drain()
        return all_published(engine, during)

    # The relay's next rounds, once the broker is back, publish what it kept.
    assert_eventually(drained, timeout=60, interval=0.5)

    received: dict[str, Event] = {}
    lock = threading.Lock()

    def keep(event: Event) -> None:
        with lock:
            received[event.id] = event

    # A durable consumer reading the topic from its beginning: every event is there, some maybe twice.
    bus.subscribe(Deduplicator(keep), group=f"reader-{uuid.uuid4().hex[:6]}")
    stored = {e.id for task in before + during for e in engine.events(task.id)}
    assert_eventually(lambda: set(received) == stored, timeout=60, interval=0.2)
    bus.close()


def all_published(engine: Engine, submitted: list[Task]) -> bool:
    return all(e.published_at is not None for task in submitted for e in engine.events(task.id))


def test_a_source_through_a_broker_outage_makes_each_task_once(
    broker: PrivateBroker, make_engine: EngineFactory
) -> None:
    engine = make_engine()
    engine.register_workflow("wf", RULES_WORKFLOW)
    topic = f"claims-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap_servers, [topic, f"{topic}.dlq"])
    produce(broker.bootstrap_servers, topic, [{"amount": n} for n in range(300)])
    spec = KafkaSourceSpec.model_validate(
        {"bootstrapServers": broker.bootstrap_servers, "topic": topic, "workflow": "wf"}
    )
    settings = SourceSettings(
        connector="outage", tenant="acme", spec=spec, batch_size=20, ack_timeout=2.0, retry_backoff=0.2,
        session_timeout=6.0,
    )  # fmt: skip
    source = KafkaSource(engine, settings)
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        assert_eventually(lambda: count(engine) >= 40, timeout=60, interval=0.01)
        broker.pause()
        try:
            paused_at = count(engine)
            threading.Event().wait(3)  # an outage of a few seconds: commits and fetches time out meanwhile
        finally:
            broker.resume()
        assert paused_at < 300
        assert_eventually(lambda: committed(broker.bootstrap_servers, settings.group_id, topic) == 300, timeout=120)
    finally:
        source.stop()
        thread.join(timeout=30)
        source.close()
    with engine.db.read() as conn:
        keys = [row.idempotency_key for row in conn.execute(sa.select(tasks.c.idempotency_key))]
    assert len(keys) == len(set(keys)) == 300


def count(engine: Engine) -> int:
    with engine.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar_one())
