"""Kafka source throughput (messages → accepted tasks per second) vs a raw kafka-python consume loop; outbox →
Kafka publish rate vs a raw producer.

Source: ``connectors.kafka.KafkaSource`` reads a 3-partition topic of JSON claims in a fresh consumer group and
submits each poll as one batch into an ``Engine`` on a fresh SQLite file (``sqlite_synchronous=NORMAL`` and
``FULL``), committing offsets after each batch. Baseline: a bare ``KafkaConsumer`` in a fresh group on the same
topic that polls the same batches and commits after each, doing nothing with the records. Timed from the first
record received to the last batch committed (the group join is not what is compared). Target: the source at 50%
or more of the raw loop's messages per second.

Publish: ``OutboxRelay`` draining the outbox (task events of submitted tasks) through ``KafkaBus.publish_many``
(idempotent producer, acks=all, batches of 100 acknowledged together) vs a raw ``KafkaProducer`` with the same
settings sending the same encoded records and flushing once per 100.

Rounds alternate subject and baseline. The broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else ``hack/kafka.sh`` starts
one (and stops it afterwards).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from kafka import KafkaConsumer, KafkaProducer

from benchmarks.harness import Comparison
from benchmarks.servers import scratch_dir, smoke
from connectors.kafka import KafkaBus, KafkaSource, SourceSettings, clients, codec
from crds.connector import KafkaSource as KafkaSourceSpec
from engine import Engine, Submission
from engine.bus import OutboxRelay
from engine.store import outbox
from engine.store.schema import events

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = "bench-source"
SPEC = {
    "inputSchema": {"type": "object", "required": ["claimId"], "properties": {"claimId": {"type": "string"}}},
    "steps": [{"name": "decide", "type": "rules", "rules": {"set": {"large": "input.amount > 1000.0"}}}],
}
BATCH = 500
RELAY_BATCH = 100


@dataclass(frozen=True)
class Sizes:
    rounds: int = 5
    messages: int = 10_000
    events: int = 5_000

    @classmethod
    def default(cls) -> Sizes:
        if smoke():
            return cls(rounds=2, messages=300, events=200)
        return cls()


@contextlib.contextmanager
def broker() -> Iterator[str]:
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    script = ["bash", str(REPO / "hack" / "kafka.sh")]
    was_running = subprocess.run([*script, "status"], capture_output=True, check=False).returncode == 0
    subprocess.run([*script, "up"], check=True, capture_output=True)
    try:
        env = subprocess.run([*script, "env"], check=True, capture_output=True, text=True).stdout
        yield env.strip().partition("=")[2]
    finally:
        if not was_running:
            subprocess.run([*script, "down"], check=False, capture_output=True)


# ---------------------------------------------------------------- source vs raw consume loop


def fill_topic(bootstrap: str, count: int) -> str:
    topic = f"bench-source-{uuid.uuid4().hex[:8]}"
    clients.ensure_topics(bootstrap, [topic], partitions=3)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for n in range(count):
            producer.send(topic, json.dumps({"claimId": f"C-{n}", "amount": n * 1.5}).encode())
        producer.flush(timeout=60)
    finally:
        producer.close()
    return topic


def time_source(bootstrap: str, topic: str, count: int, work: Path, synchronous: str) -> float:
    """Seconds per message for the source to take ``count`` messages into a fresh store."""
    folder = work / uuid.uuid4().hex[:8]
    engine = Engine(f"sqlite:///{folder / 'engine.db'}", data_dir=folder, sqlite_synchronous=synchronous)
    engine.register_workflow(WORKFLOW, SPEC)
    spec = KafkaSourceSpec.model_validate({"bootstrapServers": bootstrap, "topic": topic, "workflow": WORKFLOW})
    settings = SourceSettings(connector=f"bench-{uuid.uuid4().hex[:8]}", tenant="bench", spec=spec, batch_size=BATCH)
    source = KafkaSource(engine, settings)
    try:
        taken, started = 0, 0.0
        while taken < count:
            polled = time.perf_counter()
            batch = source.poll_once()
            if batch.consumed and not started:
                started = polled  # the first poll that returned records (the group has joined)
            taken += batch.consumed
            if batch.dead_lettered:
                raise RuntimeError(f"{batch.dead_lettered} messages dead-lettered; the benchmark input is wrong")
        return (time.perf_counter() - started) / count
    finally:
        source.close()
        engine.close()


def time_raw_consumer(bootstrap: str, topic: str, count: int) -> float:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=BATCH,
    )
    try:
        consumer.partitions_for_topic(topic)
        consumer.subscribe([topic])
        taken, started = 0, 0.0
        while taken < count:
            polled = time.perf_counter()
            batches = consumer.poll(timeout_ms=500, max_records=BATCH)
            if batches and not started:
                started = polled
            taken += sum(len(records) for records in batches.values())
            if batches:
                consumer.commit()
        return (time.perf_counter() - started) / count
    finally:
        consumer.close(autocommit=False)


def measure_source(bootstrap: str, sizes: Sizes, work: Path, synchronous: str) -> Comparison:
    topic = fill_topic(bootstrap, sizes.messages)
    subject: list[float] = []
    baseline: list[float] = []
    for _ in range(sizes.rounds):
        baseline.append(time_raw_consumer(bootstrap, topic, sizes.messages))
        subject.append(time_source(bootstrap, topic, sizes.messages, work, synchronous))
    return Comparison(f"source messages→tasks (SQLite {synchronous}) vs raw consume loop", subject, baseline, rate=True)


# ---------------------------------------------------------------- relay vs raw producer


def measure_publish(bootstrap: str, sizes: Sizes, work: Path) -> Comparison:
    engine = Engine(f"sqlite:///{work / 'relay.db'}", data_dir=work, sqlite_synchronous="NORMAL")
    engine.register_workflow(WORKFLOW, SPEC)
    for start in range(0, sizes.events, BATCH):
        engine.submit_many(
            [
                Submission(tenant="bench", workflow=WORKFLOW, input={"claimId": f"C-{n}"})
                for n in range(start, min(start + BATCH, sizes.events))
            ]
        )
    with engine.db.read() as conn:
        count = int(conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one())
    topic = f"bench-events-{uuid.uuid4().hex[:8]}"
    clients.ensure_topics(bootstrap, [topic], partitions=3)
    bus = KafkaBus(bootstrap, topic=topic)
    relay = OutboxRelay(engine.db, bus, batch_size=RELAY_BATCH)
    raw = clients.producer(bootstrap, client_id="bench-raw", ack_timeout=30)
    with engine.db.read() as conn:
        encoded = [codec.encode(e) for e in outbox.claim_unpublished(conn, count)]
    subject: list[float] = []
    baseline: list[float] = []
    try:
        for _ in range(sizes.rounds):
            started = time.perf_counter()
            for index, (key, value, headers) in enumerate(encoded, start=1):
                raw.send(topic, key=key, value=value, headers=headers)
                if index % RELAY_BATCH == 0:
                    raw.flush(timeout=30)
            raw.flush(timeout=30)
            baseline.append((time.perf_counter() - started) / count)

            with engine.db.write() as conn:
                conn.execute(sa.update(events).values(published_at=None))
            started = time.perf_counter()
            published = relay.drain()
            subject.append((time.perf_counter() - started) / count)
            assert published == count, f"relay published {published} of {count}"
    finally:
        raw.close()
        bus.close()
        engine.close()
    return Comparison("outbox→Kafka relay vs raw producer", subject, baseline, rate=True)


def run(sizes: Sizes | None = None) -> list[Comparison]:
    sizes = sizes or Sizes.default()
    with broker() as bootstrap, scratch_dir("aiplane-bench-source-") as work:
        return [
            measure_source(bootstrap, sizes, work, "NORMAL"),
            measure_source(bootstrap, sizes, work, "FULL"),
            measure_publish(bootstrap, sizes, work),
        ]
