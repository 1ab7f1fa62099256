"""The Kafka source against the real broker: messages become tasks once each, refused ones go to the dead-letter
topic with their reason, offsets are committed only after the tasks are stored, and consumer lag is measured."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from connectors.kafka import KafkaSource, SourceSettings, SourceStalledError
from connectors.kafka.source import BatchResult
from crds.connector import KafkaSource as KafkaSourceSpec
from crds.workflow import WorkflowSpec
from engine import Engine
from engine.store.schema import tasks
from tests.connectors.conftest import EngineFactory
from tests.connectors.kafkaio import committed, headers, produce, read_all
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually

CLAIMS_WORKFLOW: dict[str, Any] = {
    "inputSchema": {
        "type": "object",
        "required": ["claimId", "amount"],
        "properties": {"claimId": {"type": "string"}, "amount": {"type": "number"}},
    },
    "steps": [{"name": "decide", "type": "rules", "rules": {"set": {"big": "input.amount > 1000.0"}}}],
}


def settings(kafka: Kafka, topic: str, **spec: Any) -> SourceSettings:
    return SourceSettings(
        connector=f"claims-{uuid.uuid4().hex[:6]}",
        tenant="acme",
        spec=KafkaSourceSpec.model_validate(
            {"bootstrapServers": kafka.bootstrap_servers, "topic": topic, "workflow": "claims", **spec}
        ),
        batch_size=50,
        poll_timeout=0.2,
    )


@pytest.fixture
def engine(make_engine: EngineFactory) -> Engine:
    engine = make_engine()
    engine.register_workflow("claims", CLAIMS_WORKFLOW)
    return engine


@pytest.fixture
def topic(kafka: Kafka) -> str:
    return kafka.new_topic(partitions=3, prefix="claims-in")


@pytest.fixture
def open_sources() -> Iterator[list[KafkaSource]]:
    sources: list[KafkaSource] = []
    yield sources
    for source in sources:
        source.close()


def start(engine: Engine, config: SourceSettings, sources: list[KafkaSource], **kwargs: Any) -> KafkaSource:
    source = KafkaSource(engine, config, **kwargs)
    sources.append(source)
    return source


def consume(source: KafkaSource, count: int) -> BatchResult:
    """Poll until ``count`` messages were taken (the group's first join takes a few polls)."""
    total = BatchResult()

    def done() -> None:
        try:
            batch = source.poll_once()
        except SourceStalledError as exc:
            # A group rebalance under load: the batch is read again, as run() would.
            raise AssertionError(f"stalled: {exc}") from exc
        total.accepted += batch.accepted
        total.duplicates += batch.duplicates
        total.dead_lettered += batch.dead_lettered
        assert total.consumed >= count, f"{total.consumed} of {count} messages taken"

    assert_eventually(done, timeout=60, interval=0)
    return total


def task_keys(engine: Engine) -> list[str]:
    with engine.db.read() as conn:
        return [row.idempotency_key for row in conn.execute(sa.select(tasks.c.idempotency_key))]


def claim(n: int, amount: float = 100.0) -> dict[str, Any]:
    return {"claimId": f"C-{n}", "amount": amount}


# ---------------------------------------------------------------- messages to tasks


def test_each_message_becomes_one_task_keyed_by_its_offset(
    kafka: Kafka, engine: Engine, topic: str, open_sources: list[KafkaSource]
) -> None:
    produce(kafka.bootstrap_servers, topic, [claim(n, n * 10.0) for n in range(120)])
    config = settings(kafka, topic)
    result = consume(start(engine, config, open_sources), 120)
    assert result.dead_lettered == 0
    keys = task_keys(engine)
    assert len(keys) == len(set(keys)) == 120
    assert {key.rsplit("/", 2)[0] for key in keys} == {topic}
    page = engine.list("acme", limit=500, include_payloads=True)
    assert sorted(t.input["claimId"] for t in page.items) == sorted(f"C-{n}" for n in range(120))
    assert committed(kafka.bootstrap_servers, config.group_id, topic) == 120


def test_messages_read_again_give_back_their_tasks_instead_of_new_ones(
    kafka: Kafka, engine: Engine, topic: str, open_sources: list[KafkaSource]
) -> None:
    produce(kafka.bootstrap_servers, topic, [claim(n) for n in range(40)])
    first = settings(kafka, topic)
    consume(start(engine, first, open_sources), 40)
    assert len(task_keys(engine)) == 40
    # Another group reads the same messages from the beginning: what a crash before the commit looks like.
    again = settings(kafka, topic)
    result = consume(start(engine, again, open_sources), 40)
    assert result.accepted == 0
    assert result.duplicates >= 40
    assert len(task_keys(engine)) == 40


def test_a_message_field_as_key_dedupes_across_offsets_and_refuses_another_input(
    kafka: Kafka, engine: Engine, open_sources: list[KafkaSource]
) -> None:
    # One partition: which of the two C-2 messages comes first (and so which one is refused) is then defined;
    # across partitions it is not.
    topic = kafka.new_topic(partitions=1, prefix="claims-in")
    values = [claim(1), claim(2), claim(1), {"claimId": "C-2", "amount": 999.0}, claim(3)]
    produce(kafka.bootstrap_servers, topic, values)
    dlq = kafka.new_topic(partitions=1, prefix="claims-dlq")
    config = settings(kafka, topic, idempotencyKey="value.claimId", deadLetterTopic=dlq)
    result = consume(start(engine, config, open_sources), 5)
    assert result.duplicates >= 1  # the second C-1 (more if a rebalance made a batch be read again)
    assert sorted(task_keys(engine)) == ["C-1", "C-2", "C-3"]
    dead = read_all(kafka.bootstrap_servers, dlq, 1)
    assert {headers(record)["aiplane-dlq-reason"] for record in dead} == {"idempotency-mismatch"}
    assert {record.value for record in dead} == {json.dumps(values[3]).encode()}


def test_malformed_invalid_and_refused_messages_go_to_the_dead_letter_topic_with_the_reason(
    kafka: Kafka, engine: Engine, open_sources: list[KafkaSource]
) -> None:
    topic = kafka.new_topic(partitions=1, prefix="claims-in")
    dlq = kafka.new_topic(partitions=1, prefix="claims-dlq")
    not_json, no_amount, no_key = b"{not json", b'{"claimId": "C-9"}', b'{"amount": 1.0}'
    good = b'{"claimId": "C-1", "amount": 1.0}'
    produce(kafka.bootstrap_servers, topic, [not_json, good, no_amount, no_key], raw=True)
    config = settings(kafka, topic, deadLetterTopic=dlq, idempotencyKey="value.claimId")
    result = consume(start(engine, config, open_sources), 4)
    assert (result.accepted, result.dead_lettered) == (1, 3)
    assert task_keys(engine) == ["C-1"]
    dead = read_all(kafka.bootstrap_servers, dlq, 3)
    assert [(headers(r)["aiplane-dlq-reason"], r.value) for r in dead] == [
        ("malformed", not_json),
        ("invalid", no_amount),
        ("malformed", no_key),
    ]
    first = headers(dead[0])
    assert (first["aiplane-dlq-topic"], first["aiplane-dlq-partition"], first["aiplane-dlq-offset"]) == (
        topic,
        "0",
        "0",
    )
    assert first["aiplane-dlq-connector"] == config.connector
    assert "not JSON" in first["aiplane-dlq-detail"]
    assert "amount" in headers(dead[1])["aiplane-dlq-detail"]
    assert "claimId" in headers(dead[2])["aiplane-dlq-detail"]
    assert committed(kafka.bootstrap_servers, config.group_id, topic) == 4


def test_a_message_a_policy_refuses_is_dead_lettered_with_the_policys_message(
    kafka: Kafka, engine: Engine, topic: str, open_sources: list[KafkaSource]
) -> None:
    dlq = kafka.new_topic(partitions=1, prefix="claims-dlq")

    def policy(version: str, spec: WorkflowSpec) -> None:
        raise PermissionError("claims above the residency limit are refused")

    produce(kafka.bootstrap_servers, topic, [claim(1)])
    result = consume(start(engine, settings(kafka, topic, deadLetterTopic=dlq), open_sources, validate=policy), 1)
    assert (result.accepted, result.dead_lettered) == (0, 1)
    [dead] = read_all(kafka.bootstrap_servers, dlq, 1)
    assert headers(dead)["aiplane-dlq-reason"] == "refused"
    assert headers(dead)["aiplane-dlq-detail"] == "claims above the residency limit are refused"
    assert task_keys(engine) == []


def test_a_batch_for_a_missing_workflow_is_not_committed_and_is_taken_once_it_exists(
    kafka: Kafka, make_engine: EngineFactory, topic: str, open_sources: list[KafkaSource]
) -> None:
    engine = make_engine()
    produce(kafka.bootstrap_servers, topic, [claim(n) for n in range(10)])
    config = settings(kafka, topic)
    source = start(engine, config, open_sources)

    def stalls() -> None:
        with pytest.raises(SourceStalledError, match="claims"):
            source.poll_once()

    assert_eventually(stalls, timeout=60, interval=0, retry_on=(AssertionError, pytest.fail.Exception))
    assert committed(kafka.bootstrap_servers, config.group_id, topic) == 0
    assert task_keys(engine) == []
    engine.register_workflow("claims", CLAIMS_WORKFLOW)
    assert consume(source, 10).accepted == 10
    assert committed(kafka.bootstrap_servers, config.group_id, topic) == 10


def test_consumer_lag_is_exported_per_partition(kafka: Kafka, engine: Engine, open_sources: list[KafkaSource]) -> None:
    topic = kafka.new_topic(partitions=1, prefix="claims-in")
    produce(kafka.bootstrap_servers, topic, [claim(n) for n in range(30)])
    config = settings(kafka, topic)
    config = SourceSettings(**{**config.__dict__, "batch_size": 10})
    source = start(engine, config, open_sources)
    labels = {"connector": config.connector, "topic": topic, "partition": "0"}

    def lag() -> float | None:
        return REGISTRY.get_sample_value("aiplane_connector_consumer_lag_messages", labels)

    consume(source, 10)
    assert lag() == 20
    consume(source, 20)
    assert lag() == 0
    accepted = REGISTRY.get_sample_value(
        "aiplane_connector_messages_total", {"connector": config.connector, "outcome": "accepted"}
    )
    assert accepted == 30
