"""The broker from ``hack/kafka.sh`` does what the Kafka bus and connectors will rely on.

Keyed messages must come back complete and in order per key (one key, one partition), to a consumer group
reading from the earliest offset, and the group's committed offsets must stick.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections import defaultdict
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.fixtures.kafka import SCRIPT, Kafka
from tests.fixtures.polling import assert_eventually

KEYS = ("order-1", "order-2", "order-3", "order-4")
MESSAGES_PER_KEY = 5
CONSUME_TIMEOUT_S = 60.0


def _produce(bootstrap: str, topic: str) -> dict[str, list[str]]:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        # Per-key order must survive retries: one in-flight request per connection means a retried batch
        # cannot overtake the next one.
        max_in_flight_requests_per_connection=1,
        retries=5,
    )
    sent: dict[str, list[str]] = defaultdict(list)
    try:
        # Interleave the keys so partition assignment, not send order, is what keeps each key's sequence.
        for seq in range(MESSAGES_PER_KEY):
            for key in KEYS:
                value = f"{key}:{seq}"
                metadata = producer.send(topic, key=key.encode(), value=value.encode()).get(timeout=30)
                assert metadata.topic == topic
                sent[key].append(value)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)
    return dict(sent)


def test_keyed_messages_round_trip_in_order_per_key(kafka: Kafka) -> None:
    topic = kafka.new_topic(partitions=3)
    sent = _produce(kafka.bootstrap_servers, topic)
    expected_total = len(KEYS) * MESSAGES_PER_KEY

    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=f"test-group-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    received: dict[str, list[str]] = defaultdict(list)
    partitions_of_key: dict[str, set[int]] = defaultdict(set)
    try:
        consumer.subscribe([topic])

        def drained() -> None:
            # poll() itself blocks until records arrive (or 0.5 s pass), so no extra pause between attempts.
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    key = record.key.decode()
                    received[key].append(record.value.decode())
                    partitions_of_key[key].add(record.partition)
            count = sum(len(values) for values in received.values())
            assert count == expected_total, f"{count} of {expected_total} messages so far"

        assert_eventually(drained, timeout=CONSUME_TIMEOUT_S, interval=0, message="every produced message consumed")
        assert dict(received) == sent
        assert all(len(parts) == 1 for parts in partitions_of_key.values()), partitions_of_key

        consumer.commit()
        partitions = consumer.partitions_for_topic(topic)
        assert partitions == {0, 1, 2}
        # On a fresh topic offsets start at 0, so the committed positions add up to the number of messages read.
        committed = [consumer.committed(TopicPartition(topic, p)) or 0 for p in sorted(partitions)]
        assert sum(committed) == expected_total
    finally:
        consumer.close()


def test_new_topic_is_unique_and_has_requested_partitions(kafka: Kafka) -> None:
    first = kafka.new_topic(partitions=2)
    second = kafka.new_topic(partitions=2)
    assert first != second

    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers)
    try:
        assert first in consumer.topics()
        assert consumer.partitions_for_topic(first) == {0, 1}
    finally:
        consumer.close()


def test_start_without_a_stopped_broker_says_to_use_up(tmp_path: Path) -> None:
    """``start`` only brings back what ``stop`` kept; in a state dir without a broker it says what to run."""
    env = {**os.environ, "AIPLANE_STATE_DIR": str(tmp_path)}

    def script(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    stop = script("stop")
    assert (stop.returncode, stop.stderr.strip()) == (0, "kafka.sh: not running")
    start = script("start")
    assert start.returncode == 1
    assert f"no stopped broker in {tmp_path}/kafka to start" in start.stderr
    assert "hack/kafka.sh up" in start.stderr
