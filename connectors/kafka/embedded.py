"""Kafka in one process: the bus, the record sink and every kafkaSource of a set of Connectors, on one broker.

What ``aiplane dev --kafka HOST:PORT`` runs: the same ``KafkaSource`` runtime a consumer Deployment runs, on a
thread per source instead of a pod, and every Connector's ``bootstrapServers`` replaced by the given broker (the
manifests name the cluster's address).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from connectors.kafka.bus import DEFAULT_EVENTS_TOPIC, KafkaBus
from connectors.kafka.clients import ensure_topics
from connectors.kafka.sink import KafkaRecordSink
from connectors.kafka.source import KafkaSource, Limiter, SourceSettings, Validate
from crds.connector import ConnectorSpec
from engine.facade import Engine

log = logging.getLogger(__name__)


class EmbeddedKafka:
    def __init__(self, bootstrap_servers: str, connectors: Mapping[str, ConnectorSpec]) -> None:
        """Create the topics the connectors and the bus use (if missing), and the bus and sink to give an Engine."""
        self.bootstrap_servers = bootstrap_servers
        self.connectors = {name: self._on_broker(spec) for name, spec in connectors.items()}
        ensure_topics(bootstrap_servers, [DEFAULT_EVENTS_TOPIC, *self._topics()])
        self.bus = KafkaBus(bootstrap_servers)
        self.sink = KafkaRecordSink(bootstrap_servers)
        self.sources: list[KafkaSource] = []
        self._threads: list[threading.Thread] = []

    def start_sources(
        self, engine: Engine, tenant: str, validate: Validate | None = None, rate: Limiter | None = None
    ) -> None:
        for name, spec in self.connectors.items():
            if spec.kafka_source is None:
                continue
            source = KafkaSource(
                engine,
                SourceSettings(connector=name, tenant=tenant, spec=spec.kafka_source),
                validate=validate,
                rate=rate,
            )
            thread = threading.Thread(target=source.run, name=f"kafka-source-{name}", daemon=True)
            self.sources.append(source)
            self._threads.append(thread)
            thread.start()
            log.info("kafka source started", extra={"connector": name, "topic": spec.kafka_source.topic})

    def close(self) -> None:
        for source in self.sources:
            source.stop()
        for thread in self._threads:
            thread.join(timeout=30)
        for source in self.sources:
            source.close()
        self.bus.close()
        self.sink.close()

    def _on_broker(self, spec: ConnectorSpec) -> ConnectorSpec:
        if spec.kafka_source is not None:
            moved = spec.kafka_source.model_copy(update={"bootstrap_servers": self.bootstrap_servers})
            return spec.model_copy(update={"kafka_source": moved})
        if spec.kafka_sink is not None:
            moved_sink = spec.kafka_sink.model_copy(update={"bootstrap_servers": self.bootstrap_servers})
            return spec.model_copy(update={"kafka_sink": moved_sink})
        return spec

    def _topics(self) -> list[str]:
        topics: list[str] = []
        for spec in self.connectors.values():
            if spec.kafka_source is not None:
                topics.append(spec.kafka_source.topic)
                topics.append(spec.kafka_source.dead_letter_topic or f"{spec.kafka_source.topic}.dlq")
            if spec.kafka_sink is not None:
                topics.append(spec.kafka_sink.topic)
        return topics
