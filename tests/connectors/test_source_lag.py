"""The consumer-lag gauge of a Kafka source keeps up while the source is stalled: a stall (here a workflow that is
not registered yet) is when messages pile up, and an alert on the gauge must see them then."""

from __future__ import annotations

import threading
import uuid

import pytest
from prometheus_client import REGISTRY

from connectors.kafka import KafkaSource, SourceSettings
from crds.connector import KafkaSource as KafkaSourceSpec
from tests.connectors.conftest import RULES_WORKFLOW, EngineFactory
from tests.connectors.kafkaio import produce
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually

pytestmark = pytest.mark.integration

PARTITIONS = 2


def lag(connector: str, topic: str) -> float | None:
    """The gauge summed over the topic's partitions; None while no partition has one."""
    values = [
        REGISTRY.get_sample_value(
            "aiplane_connector_consumer_lag_messages",
            {"connector": connector, "topic": topic, "partition": str(partition)},
        )
        for partition in range(PARTITIONS)
    ]
    present = [value for value in values if value is not None]
    return sum(present) if present else None


def stalls(connector: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("aiplane_connector_stalls_total", {"connector": connector, "reason": reason})
    return value or 0.0


def test_the_lag_gauge_counts_the_messages_of_a_stalled_source(kafka: Kafka, make_engine: EngineFactory) -> None:
    messages = 7
    engine = make_engine()
    topic = kafka.new_topic(partitions=PARTITIONS, prefix="lag-in")
    produce(kafka.bootstrap_servers, topic, [{"amount": n} for n in range(messages)])
    connector = f"lag-{uuid.uuid4().hex[:8]}"
    spec = KafkaSourceSpec.model_validate(
        {"bootstrapServers": kafka.bootstrap_servers, "topic": topic, "workflow": "wf"}
    )
    settings = SourceSettings(connector=connector, tenant="acme", spec=spec, retry_backoff=0.2, poll_timeout=0.2)
    source = KafkaSource(engine, settings)
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        # Every poll reads the messages and stalls on the missing workflow, so no poll ever succeeds.
        assert_eventually(lambda: stalls(connector, "workflow-missing") >= 2, timeout=60, interval=0.1)
        assert_eventually(lambda: lag(connector, topic) == messages, timeout=30, interval=0.1)
        assert stalls(connector, "workflow-missing") >= 2

        engine.register_workflow("wf", RULES_WORKFLOW)
        assert_eventually(lambda: lag(connector, topic) == 0, timeout=60, interval=0.1)
    finally:
        source.stop()
        thread.join(timeout=30)
        source.close()
