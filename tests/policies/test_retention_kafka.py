"""Topic retention on a real broker: the events topic gets the shortest events retention of the Policies."""

from __future__ import annotations

from datetime import timedelta

import pytest

from policies.retention_kafka import TopicRetentionError, set_topic_retention, topic_retention
from tests.fixtures.kafka import Kafka

pytestmark = pytest.mark.integration


def test_sets_and_changes_retention_ms(kafka: Kafka) -> None:
    topic = kafka.new_topic(partitions=1, prefix="retention")
    assert set_topic_retention(kafka.bootstrap_servers, {topic: timedelta(days=30)}) == {topic: 2_592_000_000}
    assert topic_retention(kafka.bootstrap_servers, topic) == 2_592_000_000
    set_topic_retention(kafka.bootstrap_servers, {topic: timedelta(hours=1)})
    assert topic_retention(kafka.bootstrap_servers, topic) == 3_600_000


def test_a_missing_topic_is_a_clear_error(kafka: Kafka) -> None:
    with pytest.raises(TopicRetentionError, match="no-such-topic"):
        set_topic_retention(kafka.bootstrap_servers, {"no-such-topic-for-retention": timedelta(days=1)})
