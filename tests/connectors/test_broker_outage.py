"""The broker goes away and comes back: the outbox keeps the events and drains afterwards, and a source loses and
duplicates nothing.

A broker of its own (``hack/kafka.sh`` under a private state dir), since the outage is a real stop: ``hack/kafka.sh
stop`` shuts its JVM down (clients get connection refused, not a silent peer) and ``start`` runs it again on the
same port with the same data, as a broker restarted by its operator comes back.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from connectors.kafka import KafkaBus, KafkaSource, SourceSettings
from connectors.kafka.clients import ensure_topics
from crds.connector import KafkaSource as KafkaSourceSpec
from engine import Engine, Event, Task
from engine.bus import Deduplicator
from engine.store.schema import tasks
from tests.connectors.conftest import RULES_WORKFLOW, EngineFactory
from tests.connectors.kafkaio import committed, produce, read_all
from tests.fixtures.polling import assert_eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = ["bash", str(REPO / "hack" / "kafka.sh")]


@dataclass(frozen=True)
class PrivateBroker:
    bootstrap_servers: str
    env: dict[str, str]

    def script(self, command: str) -> str:
        result = subprocess.run(
            [*SCRIPT, command], env=self.env, capture_output=True, text=True, timeout=600, check=False
        )
        assert result.returncode == 0, f"hack/kafka.sh {command}: {result.stderr}"
        return result.stdout

    def stop(self) -> None:
        self.script("stop")

    def start(self) -> None:
        self.script("start")
        # The same address as before the stop: clients reconnect to what they knew.
        assert self.script("env").strip() == f"KAFKA_BOOTSTRAP_SERVERS={self.bootstrap_servers}"

    def refuses_connections(self) -> bool:
        host, _, port = self.bootstrap_servers.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
        except ConnectionRefusedError:
            return True
        return False


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    state = tmp_path_factory.mktemp("private-kafka")
    env = {**os.environ, "AIPLANE_STATE_DIR": str(state)}
    subprocess.run([*SCRIPT, "up"], env=env, check=True, capture_output=True, timeout=600)
    try:
        output = subprocess.run([*SCRIPT, "env"], env=env, check=True, capture_output=True, text=True).stdout
        yield PrivateBroker(output.strip().partition("=")[2], env)
    finally:
        subprocess.run([*SCRIPT, "down"], env=env, check=False, capture_output=True, timeout=120)


@pytest.fixture
def outage(broker: PrivateBroker) -> Iterator[PrivateBroker]:
    """The broker, started again after the test whatever happened to it (the next test needs it up)."""
    yield broker
    broker.script("start")


def test_a_restarted_broker_keeps_its_address_topics_records_and_committed_offsets(outage: PrivateBroker) -> None:
    broker = outage
    topic = f"kept-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap_servers, [topic], partitions=1)
    produce(broker.bootstrap_servers, topic, [{"n": n} for n in range(5)])
    group = f"kept-{uuid.uuid4().hex[:6]}"
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=group, enable_auto_commit=False)
    try:
        consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(3, "", -1)})
    finally:
        consumer.close(autocommit=False)
    broker.stop()
    assert broker.refuses_connections()
    broker.start()  # asserts the same address
    assert [json.loads(r.value) for r in read_all(broker.bootstrap_servers, topic, 5)] == [{"n": n} for n in range(5)]
    assert committed(broker.bootstrap_servers, group, topic) == 3


def test_events_stay_in_the_outbox_while_the_broker_is_down_and_drain_afterwards(
    outage: PrivateBroker, db_url: str, make_engine: EngineFactory
) -> None:
    broker = outage
    topic = f"events-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap_servers, [topic])
    bus = KafkaBus(broker.bootstrap_servers, topic=topic, ack_timeout=2.0)
    engine = make_engine(db_url, bus=bus)  # both stores: PostgreSQL's relay waits for the broker in its transaction
    engine.register_workflow("wf", RULES_WORKFLOW)
    before = [engine.submit("acme", "wf", {"amount": n}) for n in range(5)]
    assert engine.relay.drain() == 5
    broker.stop()
    assert broker.refuses_connections()
    during = [engine.submit("acme", "wf", {"amount": n}) for n in range(10)]
    assert engine.relay.drain() == 0
    assert engine.relay.drain() == 0  # a second round, on the producer made after the first failed, too
    assert all(e.published_at is None for task in during for e in engine.events(task.id))
    broker.start()

    def drained() -> bool:
        engine.relay.drain()
        return all_published(engine, during)

    # The relay's next rounds, once the broker is back, publish what it kept.
    assert_eventually(drained, timeout=60, interval=0.5)

    handled: Counter[str] = Counter()
    lock = threading.Lock()

    def keep(event: Event) -> None:
        with lock:
            handled[event.id] += 1

    # A durable consumer reading the topic from its beginning: every event is there (at least once on the topic),
    # and deduplicated by id each is handled once.
    bus.subscribe(Deduplicator(keep), group=f"reader-{uuid.uuid4().hex[:6]}")
    stored = {e.id for task in before + during for e in engine.events(task.id)}
    assert_eventually(lambda: set(handled) == stored, timeout=60, interval=0.2)
    bus.close()
    assert set(handled.values()) == {1}


def all_published(engine: Engine, submitted: list[Task]) -> bool:
    return all(e.published_at is not None for task in submitted for e in engine.events(task.id))


def test_a_source_through_a_broker_outage_makes_each_task_once(
    outage: PrivateBroker, make_engine: EngineFactory
) -> None:
    broker = outage
    total = 500
    engine = make_engine()
    engine.register_workflow("wf", RULES_WORKFLOW)
    topic = f"claims-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap_servers, [topic, f"{topic}.dlq"])
    produce(broker.bootstrap_servers, topic, [{"amount": n} for n in range(total)])
    spec = KafkaSourceSpec.model_validate(
        {"bootstrapServers": broker.bootstrap_servers, "topic": topic, "workflow": "wf"}
    )
    settings = SourceSettings(
        connector="outage", tenant="acme", spec=spec, batch_size=10, ack_timeout=2.0, retry_backoff=0.2,
        session_timeout=6.0,
    )  # fmt: skip
    source = KafkaSource(engine, settings)
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        assert_eventually(lambda: count(engine) >= 20, timeout=60, interval=0.01)
        broker.stop()
        stopped_at = count(engine)
        # The consumer keeps running through the outage (the restart takes seconds): fetches, commits and
        # heartbeats are refused meanwhile.
        assert broker.refuses_connections()
        broker.start()
        assert stopped_at < total, "the source took every message before the broker stopped: no outage mid-stream"
        assert_eventually(lambda: committed(broker.bootstrap_servers, settings.group_id, topic) == total, timeout=120)
    finally:
        source.stop()
        thread.join(timeout=30)
        source.close()
    with engine.db.read() as conn:
        keys = [row.idempotency_key for row in conn.execute(sa.select(tasks.c.idempotency_key))]
    assert len(keys) == len(set(keys)) == total


def count(engine: Engine) -> int:
    with engine.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar_one())
