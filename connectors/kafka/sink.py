"""``KafkaRecordSink``: where kafkaSink connector steps publish (``engine.sinks.RecordSink``) when Kafka is there.

A workflow's kafkaSink step projects the task (its input, step outputs, vars) into a record and keys it per entity
(the Connector's ``key``, e.g. the claim id; the task id by default), so one entity's records stay in order on one
partition. ``send`` returns only once the broker acknowledged: the step succeeds only then, and a failure is a
retryable attempt of the step. The record carries the step's idempotency key as a header, the same on every
attempt, so a consumer can drop the copy a retried step may have sent.
"""

from __future__ import annotations

import json
from typing import Any

from kafka.errors import KafkaError

from connectors.kafka import clients, metrics
from engine.sinks import Record


class KafkaRecordSink:
    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str = "aiplane-sink",
        ack_timeout: float = 10.0,
        **producer_overrides: Any,
    ) -> None:
        self.ack_timeout = ack_timeout
        self._producer = clients.Producer(
            bootstrap_servers, client_id=client_id, ack_timeout=ack_timeout, **producer_overrides
        )

    def send(self, record: Record) -> None:
        value = None if record.tombstone else json.dumps(record.value, separators=(",", ":")).encode()
        headers = [(name, text.encode()) for name, text in record.headers.items()]
        future = self._producer.send(record.topic, key=record.key.encode(), value=value, headers=headers)
        try:
            future.get(timeout=self.ack_timeout)
        except KafkaError:
            self._producer.reset()  # see clients.Producer; the step's next attempt sends it again
            raise
        metrics.RECORDS_SENT.labels(record.topic).inc()

    def close(self) -> None:
        self._producer.close()
