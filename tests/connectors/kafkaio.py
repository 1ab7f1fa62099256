"""Test-side Kafka I/O with plain kafka-python clients: what a producer of claims and a reader of results do."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.fixtures.polling import assert_eventually


def produce(bootstrap: str, topic: str, values: Iterable[Any], *, raw: bool = False) -> None:
    """Send each value (JSON-encoded unless ``raw`` bytes) and wait until the broker has them all."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for value in values:
            producer.send(topic, value=value if raw else json.dumps(value).encode())
        producer.flush(timeout=30)
    finally:
        producer.close()


def read_all(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list[Any]:
    """Every record of ``topic`` from the beginning, once at least ``count`` are there (ConsumerRecords)."""
    with _from_the_beginning(bootstrap, topic) as (consumer, _):
        records: list[Any] = []

        def enough() -> list[Any]:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            assert len(records) >= count, f"{len(records)} of {count} records on {topic}"
            return records

        return assert_eventually(enough, timeout=timeout, interval=0)


def read_to_end(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Any]:
    """Every record of ``topic`` (ConsumerRecords), from the beginning to its end offsets as they are now: all that
    is there once its producers are done, duplicates included, without waiting for a count."""
    with _from_the_beginning(bootstrap, topic) as (consumer, partitions):
        end = consumer.end_offsets(partitions)
        records: list[Any] = []

        def at_end() -> list[Any]:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            behind = {p.partition: end[p] - consumer.position(p) for p in partitions if consumer.position(p) < end[p]}
            assert not behind, f"records left to read on {topic}, per partition: {behind}"
            return records

        return assert_eventually(at_end, timeout=timeout, interval=0)


@contextmanager
def _from_the_beginning(bootstrap: str, topic: str) -> Iterator[tuple[KafkaConsumer, list[TopicPartition]]]:
    """A group-less consumer assigned every partition of ``topic``, at its beginning; closed after."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert partitions, f"topic {topic} has no partitions"
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        yield consumer, partitions
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str) -> int:
    """The sum of the group's committed offsets on ``topic``: how many messages it has finished with."""
    # A consumer of the group that joins nothing: it only asks the coordinator (which the admin client's API for
    # this has been renamed across kafka-python versions).
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        offsets = [consumer.committed(TopicPartition(topic, p)) for p in partitions]
    finally:
        consumer.close(autocommit=False)
    return sum(offset for offset in offsets if offset is not None)


def headers(record: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers or ()}
