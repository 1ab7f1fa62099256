"""A tenant's quota of tasks in flight is back-pressure on a Kafka source, through the real broker and store: the
source takes exactly as many messages as the quota leaves room for, leaves the rest on the topic (not committed,
not dead-lettered) while the tasks run, and takes them once tasks finish, each exactly once."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from connectors.kafka import KafkaSource, SourceSettings, SourceStalledError
from connectors.kafka.source import BatchResult
from crds.connector import KafkaSource as KafkaSourceSpec
from crds.policy import Policy
from engine import Engine
from engine.store.schema import tasks
from policies.quota import Quotas
from policies.sources import PolicySet
from tests.connectors.conftest import RULES_WORKFLOW, EngineFactory
from tests.connectors.kafkaio import committed, produce, read_all
from tests.engine.conftest import fast_worker
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually

QUOTA = 3
MESSAGES = 10


SCHEMA_WORKFLOW = {**RULES_WORKFLOW, "inputSchema": {"type": "object", "required": ["amount"]}}
Sources = Callable[[int], tuple[KafkaSource, str, str]]


@pytest.fixture
def sources(kafka: Kafka, make_engine: EngineFactory) -> Iterator[Sources]:
    """Makes a source of tenant acme on a new topic of N partitions, whose Policy allows acme 3 tasks in flight;
    (source, topic, dead-letter topic)."""
    quota = Policy.model_validate(
        {"metadata": {"name": "small"}, "spec": {"access": {"tenants": ["acme"]}, "quota": {"maxTasksInFlight": QUOTA}}}
    )
    engine = make_engine(quota=Quotas(PolicySet([quota])).max_in_flight)
    engine.register_workflow("claims", SCHEMA_WORKFLOW)
    opened: list[KafkaSource] = []

    def make(partitions: int) -> tuple[KafkaSource, str, str]:
        topic = kafka.new_topic(partitions=partitions, prefix="quota-in")
        dlq = kafka.new_topic(partitions=1, prefix="quota-dlq")
        config = SourceSettings(
            connector=f"quota-{uuid.uuid4().hex[:6]}",
            tenant="acme",
            spec=KafkaSourceSpec.model_validate(
                {
                    "bootstrapServers": kafka.bootstrap_servers,
                    "topic": topic,
                    "workflow": "claims",
                    "deadLetterTopic": dlq,
                }
            ),
            batch_size=50,
            poll_timeout=0.2,
        )
        source = KafkaSource(engine, config)
        opened.append(source)
        return source, topic, dlq

    yield make
    for source in opened:
        source.close()


@pytest.fixture
def source(sources: Sources) -> tuple[KafkaSource, str, str]:
    return sources(2)


def _poll(source: KafkaSource) -> BatchResult:
    try:
        return source.poll_once()
    except SourceStalledError as exc:  # a group rebalance: read again, as run() would
        raise AssertionError(f"stalled: {exc}") from exc


def _amounts(engine: Engine) -> list[float]:
    with engine.db.read() as conn:
        rows = conn.execute(sa.select(tasks.c.input)).scalars()
        return sorted(json.loads(row)["amount"] for row in rows)


def _waiting(connector: str) -> float | None:
    return REGISTRY.get_sample_value(
        "aiplane_connector_waiting_messages", {"connector": connector, "reason": "quota-exceeded"}
    )


def test_a_source_at_its_quota_takes_exactly_the_room_and_the_rest_once_tasks_finish(
    kafka: Kafka, source: tuple[KafkaSource, str, str]
) -> None:
    kafka_source, topic, dlq = source
    engine, group = kafka_source.engine, kafka_source.settings.group_id
    produce(kafka.bootstrap_servers, topic, [{"amount": float(n)} for n in range(MESSAGES)])

    # The group's first join takes a few polls; then one poll sees every message and takes the quota's room.
    first = BatchResult()

    def everything_seen() -> None:
        batch = _poll(kafka_source)
        first.accepted += batch.accepted
        first.dead_lettered += batch.dead_lettered
        first.deferred, first.waits_on = batch.deferred, batch.waits_on
        assert first.accepted + first.deferred >= MESSAGES, f"{first.accepted} taken, {first.deferred} left"

    assert_eventually(everything_seen, timeout=60, interval=0)
    assert (first.accepted, first.dead_lettered, first.deferred) == (QUOTA, 0, MESSAGES - QUOTA)
    assert first.waits_on == "quota-exceeded"
    assert committed(kafka.bootstrap_servers, group, topic) == QUOTA
    assert len(_amounts(engine)) == QUOTA
    assert _waiting(kafka_source.settings.connector) == MESSAGES - QUOTA

    # Nothing finished: the rest is read again and left again, however often the source polls.
    for _ in range(3):
        again = _poll(kafka_source)
        assert (again.accepted, again.dead_lettered) == (0, 0)
    assert len(_amounts(engine)) == QUOTA
    assert committed(kafka.bootstrap_servers, group, topic) == QUOTA

    # Workers finish tasks; each finished one makes room for the next message, until every one is a task.
    with fast_worker(engine):

        def all_taken() -> None:
            _poll(kafka_source)
            assert committed(kafka.bootstrap_servers, group, topic) == MESSAGES

        assert_eventually(all_taken, timeout=60, interval=0.05)
    assert _amounts(engine) == [float(n) for n in range(MESSAGES)]  # each message exactly once
    assert _poll(kafka_source).deferred == 0
    assert _waiting(kafka_source.settings.connector) == 0
    with pytest.raises(AssertionError):  # nothing was dead-lettered on the way
        read_all(kafka.bootstrap_servers, dlq, 1, timeout=1.0)


def test_messages_behind_a_waiting_one_wait_too_and_refusals_among_them_are_dead_lettered_once(
    kafka: Kafka, sources: Sources
) -> None:
    kafka_source, topic, dlq = sources(1)
    engine, group = kafka_source.engine, kafka_source.settings.group_id
    produce(kafka.bootstrap_servers, topic, [{"amount": 0.0}, {"amount": 1.0}, {"amount": 2.0}, {"amount": 3.0}])
    produce(kafka.bootstrap_servers, topic, [b"not json"], raw=True)  # offset 4: malformed
    produce(kafka.bootstrap_servers, topic, [{"no": "amount"}, {"amount": 6.0}])  # 5: invalid; 6

    def first_quota_full() -> None:
        batch = _poll(kafka_source)
        assert batch.accepted == QUOTA
        assert (batch.dead_lettered, batch.deferred) == (0, 7 - QUOTA)  # the refusals wait behind offset 3

    assert_eventually(first_quota_full, timeout=60, interval=0)
    assert committed(kafka.bootstrap_servers, group, topic) == QUOTA
    with fast_worker(engine):

        def all_taken() -> None:
            _poll(kafka_source)
            assert committed(kafka.bootstrap_servers, group, topic) == 7

        assert_eventually(all_taken, timeout=60, interval=0.05)
    assert _amounts(engine) == [0.0, 1.0, 2.0, 3.0, 6.0]
    letters = read_all(kafka.bootstrap_servers, dlq, 2)
    assert sorted(r.offset for r in letters) == [0, 1]  # each refusal dead-lettered once, in order
    assert [dict(r.headers)["aiplane-dlq-offset"] for r in letters] == [b"4", b"5"]
