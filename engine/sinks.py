"""Where kafkaSink connector steps send records: Kafka at scale, an in-process sink in the embedded mode.

A record carries the step idempotency key as a header, so a step retried after a crash (which may send the same
record twice) can be deduplicated by consumers, as with every other downstream.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Record:
    topic: str
    key: str
    value: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The kafkaSink Connector the record is for: a sink serving several clusters routes by it.
    connector: str | None = None
    #: A tombstone (the key, no value): a compacted topic then drops the key's earlier records (a GDPR erasure).
    tombstone: bool = False


class RecordSink(Protocol):
    def send(self, record: Record) -> None:
        """Deliver the record, or raise; returning means the sink has it."""
        ...


class InMemorySink:
    """Keeps records per topic in this process and tells subscribers, in send order."""

    def __init__(self) -> None:
        self._records: dict[str, list[Record]] = {}
        self._subscribers: list[Callable[[Record], None]] = []
        self._lock = threading.Lock()

    def send(self, record: Record) -> None:
        with self._lock:
            self._records.setdefault(record.topic, []).append(record)
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber(record)

    def records(self, topic: str) -> list[Record]:
        with self._lock:
            return list(self._records.get(topic, ()))

    def subscribe(self, subscriber: Callable[[Record], None]) -> None:
        with self._lock:
            self._subscribers.append(subscriber)
