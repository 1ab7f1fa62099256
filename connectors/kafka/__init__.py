"""Kafka for aiplane on kafka-python: the engine's event bus (``KafkaBus``), the source runtime that turns messages
into tasks (``KafkaSource``) and the sink kafkaSink steps publish through (``KafkaRecordSink``)."""

from connectors.kafka.bus import DEFAULT_EVENTS_TOPIC, KafkaBus, KafkaSubscription
from connectors.kafka.sink import KafkaRecordSink
from connectors.kafka.source import BatchResult, KafkaSource, SourceSettings, SourceStalledError

__all__ = [
    "DEFAULT_EVENTS_TOPIC",
    "BatchResult",
    "KafkaBus",
    "KafkaRecordSink",
    "KafkaSource",
    "KafkaSubscription",
    "SourceSettings",
    "SourceStalledError",
]
