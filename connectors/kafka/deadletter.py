"""The dead-letter topic of a source: a message it cannot turn into a task goes there, never nowhere.

The record keeps the original key and value byte for byte; headers say why and where it came from, so it can be
fixed and put back on the source topic.
"""

from __future__ import annotations

from typing import Any

from kafka.errors import KafkaError

from connectors.kafka.clients import Producer

HEADER_REASON = "aiplane-dlq-reason"
HEADER_DETAIL = "aiplane-dlq-detail"
HEADER_CONNECTOR = "aiplane-dlq-connector"
HEADER_TOPIC = "aiplane-dlq-topic"
HEADER_PARTITION = "aiplane-dlq-partition"
HEADER_OFFSET = "aiplane-dlq-offset"

# Why a message was dead-lettered (the reason header).
MALFORMED = "malformed"  # not JSON, or its idempotency key could not be derived
INVALID = "invalid"  # the workflow refused the input (schema)
MISMATCH = "idempotency-mismatch"  # the key was used before for another input
REFUSED = "refused"  # the source's validate hook refused it
# A Policy denied it at intake: the reason is the denial's, as in the gateway's problem type.
TENANT_DENIED = "tenant-denied"
RESIDENCY_DENIED = "residency-denied"

# Headers are for people and tools to read, not a place for a whole stack trace.
_DETAIL_LIMIT = 2000


class DeadLetters:
    def __init__(self, producer: Producer, topic: str, connector: str, ack_timeout: float) -> None:
        self.producer = producer
        self.topic = topic
        self.connector = connector
        self.ack_timeout = ack_timeout
        self._pending: list[Any] = []

    def send(self, record: Any, reason: str, detail: str) -> None:
        """Queue ``record`` (a ConsumerRecord) for the dead-letter topic; ``confirm`` waits for the broker."""
        headers = [
            *(record.headers or ()),
            (HEADER_REASON, reason.encode()),
            (HEADER_DETAIL, detail[:_DETAIL_LIMIT].encode()),
            (HEADER_CONNECTOR, self.connector.encode()),
            (HEADER_TOPIC, record.topic.encode()),
            (HEADER_PARTITION, str(record.partition).encode()),
            (HEADER_OFFSET, str(record.offset).encode()),
        ]
        self._pending.append(self.producer.send(self.topic, key=record.key, value=record.value, headers=headers))

    def confirm(self) -> int:
        """Wait until the broker has every queued record, or raise (the batch must then not be committed)."""
        pending, self._pending = self._pending, []
        try:
            if pending:
                self.producer.flush()
            for future in pending:
                future.get(timeout=self.ack_timeout)
        except KafkaError:
            self.producer.reset()  # see clients.Producer
            raise
        return len(pending)

    def discard(self) -> None:
        """Forget queued records of a batch that will be read again (those already sent stay sent: a dead
        letter is delivered at least once, told apart by its source topic, partition and offset headers)."""
        self._pending = []
