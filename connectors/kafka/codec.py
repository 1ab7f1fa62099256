"""Events as Kafka records: the JSON value carries the whole event; the headers carry its id and type.

The type is a header so that a subscriber filtering by type skips other records without decoding their value,
and the id is one so that tools (and the dead-letter path) can deduplicate without knowing the value's format.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from engine.models import Event

HEADER_EVENT_ID = "aiplane-event-id"
HEADER_EVENT_TYPE = "aiplane-event-type"

Headers = list[tuple[str, bytes]]


def encode(event: Event) -> tuple[bytes | None, bytes, Headers]:
    """(key, value, headers). The key is the task id, so one task's events share a partition and keep their order."""
    value = {
        "id": event.id,
        "seq": event.seq,
        "task_id": event.task_id,
        "tenant": event.tenant,
        "type": event.type,
        "payload": event.payload,
        "created_at": event.created_at.isoformat(),
    }
    key = event.task_id.encode() if event.task_id is not None else None
    headers = [(HEADER_EVENT_ID, event.id.encode()), (HEADER_EVENT_TYPE, event.type.encode())]
    return key, json.dumps(value, separators=(",", ":")).encode(), headers


def decode(value: bytes) -> Event:
    data: dict[str, Any] = json.loads(value)
    return Event(
        id=data["id"],
        seq=data["seq"],
        task_id=data["task_id"],
        tenant=data["tenant"],
        type=data["type"],
        payload=data["payload"],
        created_at=datetime.fromisoformat(data["created_at"]),
        # As the relay handed it over: an event on its way is not yet marked published.
        published_at=None,
    )


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode()
    return None
