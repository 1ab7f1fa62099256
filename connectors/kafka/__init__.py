"""Kafka for aiplane on kafka-python: the engine's event bus (``KafkaBus``)."""

from connectors.kafka.bus import DEFAULT_EVENTS_TOPIC, KafkaBus, KafkaSubscription

__all__ = ["DEFAULT_EVENTS_TOPIC", "KafkaBus", "KafkaSubscription"]
