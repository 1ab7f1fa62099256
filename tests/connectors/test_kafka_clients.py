"""The settings every aiplane producer runs with: the outbox marks an event sent, and a source commits past a dead
letter, on the strength of an idempotent producer with acks=all and at most 5 requests in flight."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import KafkaProducer

from connectors.kafka import KafkaBus, clients
from crds.connector import KafkaAuth
from tests.fixtures.kafka import Kafka

SASL = KafkaAuth.model_validate(
    {
        "mechanism": "SCRAM-SHA-512",
        "tls": False,
        "username": {"name": "kafka-user", "key": "username"},
        "password": {"name": "kafka-user", "key": "password"},
    }
)


class Secrets:
    def secret(self, name: str, key: str) -> str | None:
        return {"username": "aiplane", "password": "s3cret"}.get(key)


def assert_guarantees(config: dict[str, Any]) -> None:
    assert config["enable_idempotence"] is True
    assert config["acks"] in ("all", -1)  # kafka-python stores "all" as -1
    assert 1 <= config["max_in_flight_requests_per_connection"] <= 5


@pytest.mark.parametrize("auth", [None, SASL], ids=["plaintext", "sasl"])
def test_a_producer_is_idempotent_with_acks_all_and_bounded_in_flight(auth: KafkaAuth | None) -> None:
    overrides = clients.security_settings(auth, Secrets())
    config = clients.producer_config("127.0.0.1:9", client_id="t", ack_timeout=2.0, **overrides)
    assert_guarantees(config)
    # The client retries within the delivery timeout; each request must be able to time out inside it.
    assert config["request_timeout_ms"] < config["delivery_timeout_ms"]
    # Every setting is one kafka-python knows (a misspelt one is rejected only when a producer is made).
    assert set(config) <= set(KafkaProducer.DEFAULT_CONFIG)


@pytest.mark.parametrize(
    "override",
    [{"acks": 1}, {"enable_idempotence": False}, {"max_in_flight_requests_per_connection": 10}],
    ids=lambda override: next(iter(override)),
)
def test_the_delivery_guarantees_cannot_be_overridden(override: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(override))):
        clients.producer_config("127.0.0.1:9", client_id="t", ack_timeout=2.0, **override)


def test_the_bus_producer_on_the_broker_has_them(kafka: Kafka) -> None:
    producer = clients.producer(kafka.bootstrap_servers, client_id="t", ack_timeout=5.0)
    try:
        assert_guarantees(producer.config)
    finally:
        producer.close()
    bus = KafkaBus(kafka.bootstrap_servers, topic=kafka.new_topic(partitions=1, prefix="clients"))
    try:
        assert_guarantees(bus._producer._current().config)
    finally:
        bus.close()
