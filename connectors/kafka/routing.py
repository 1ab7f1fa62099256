"""``ConnectorRecordSink``: kafkaSink records to the Kafka cluster of their own Connector.

``KafkaRecordSink`` publishes to one cluster, which suits ``aiplane dev --kafka`` (every Connector is pointed at the
one broker). Workers in a cluster may serve kafkaSink Connectors on different clusters, with their own SASL
credentials: this sink looks each record's Connector up (``Record.connector``) and sends through a
``KafkaRecordSink`` per cluster, that is per bootstrap servers and ``auth`` (Connectors on the same cluster share
one producer). The Connector decides where and how a step's result goes: topic, key and projection (the engine
applies those when it makes the record), cluster and credentials (here).
"""

from __future__ import annotations

import threading
from typing import Any

from connectors.kafka.clients import security_settings
from connectors.kafka.sink import KafkaRecordSink
from engine.executors.resolvers import ConnectorResolver, SecretResolver
from engine.sinks import Record


class ConnectorRecordSink:
    def __init__(
        self,
        connectors: ConnectorResolver,
        secrets: SecretResolver | None = None,
        *,
        client_id: str = "aiplane-sink",
        ack_timeout: float = 10.0,
        **producer_overrides: Any,
    ) -> None:
        self.connectors = connectors
        self.secrets = secrets
        self.client_id = client_id
        self.ack_timeout = ack_timeout
        self.producer_overrides = producer_overrides
        self._sinks: dict[str, KafkaRecordSink] = {}
        self._lock = threading.Lock()

    def send(self, record: Record) -> None:
        """Publish to the record's Connector's cluster; raises (a retryable step attempt) when the Connector is not
        a kafkaSink (any more), a Secret is missing, or the broker does not acknowledge."""
        self._sink_for(record.connector).send(record)

    def _sink_for(self, connector: str | None) -> KafkaRecordSink:
        if connector is None:
            raise LookupError("the record names no Connector; this sink routes by Connector")
        spec = self.connectors.connector(connector)
        if spec is None or spec.kafka_sink is None:
            raise LookupError(f"connector {connector!r} is not a kafkaSink Connector (any more)")
        sink = spec.kafka_sink
        # Credentials come into the key through the auth block (Secret references), not their values: a rotated
        # password needs a restart of the worker, like any other long-lived Kafka client.
        cluster = sink.bootstrap_servers + "|" + (sink.auth.model_dump_json() if sink.auth else "")
        with self._lock:
            existing = self._sinks.get(cluster)
        if existing is not None:
            return existing
        # Made outside the lock: a producer waits for its cluster's metadata, and an unreachable cluster must not
        # hold up records for the others.
        created = KafkaRecordSink(
            sink.bootstrap_servers,
            client_id=self.client_id,
            ack_timeout=self.ack_timeout,
            **security_settings(sink.auth, self.secrets),
            **self.producer_overrides,
        )
        with self._lock:
            kept = self._sinks.setdefault(cluster, created)
        if kept is not created:  # another thread made one first
            created.close()
        return kept

    def close(self) -> None:
        with self._lock:
            sinks, self._sinks = list(self._sinks.values()), {}
        for sink in sinks:
            sink.close()
