"""Queue order: priorities with aging.

A runnable step is ordered by ``sort_at = ready_at + delay(priority)`` (high 0 s, normal 10 s, low 60 s by
default). Higher classes go first among steps that became ready at about the same time, yet a step that has
waited longer than the gap between two classes goes ahead of newer steps of the higher class: the wait of a
lower class is bounded by that gap, so nothing starves. It is one indexed column and a plain ORDER BY, which
both databases serve from the index, unlike weighted round-robin which needs per-class queries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from engine.errors import InvalidRequestError
from engine.models import Priority

DEFAULT_DELAYS: Mapping[Priority, timedelta] = {
    Priority.HIGH: timedelta(0),
    Priority.NORMAL: timedelta(seconds=10),
    Priority.LOW: timedelta(seconds=60),
}


@dataclass(frozen=True)
class PriorityPolicy:
    delays: Mapping[Priority, timedelta] = field(default_factory=lambda: dict(DEFAULT_DELAYS))

    def sort_at(self, priority: str, ready_at: datetime) -> datetime:
        return ready_at + self.delays[Priority(priority)]


def parse_priority(value: str | Priority) -> Priority:
    try:
        return Priority(value)
    except ValueError:
        allowed = ", ".join(p.value for p in Priority)
        raise InvalidRequestError(f"unknown priority {value!r}; use one of {allowed}", field="priority") from None
