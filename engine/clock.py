"""Time and ids: UTC everywhere, sortable ids.

The clock is injectable so tests and simulations can move time without sleeping; every timestamp the engine
writes comes from one ``Clock``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

from ulid import ULID

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The default clock: the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


_lock = threading.Lock()
_last = 0


def new_id() -> str:
    """A ULID: 26 characters, sortable by creation time, so ids double as a stable order (tasks, events).

    Plain ULIDs are random within one millisecond; ids made in the same millisecond by this process are made
    monotonic (the previous one plus one) so "order by id" is also the order they were made in.
    """
    global _last  # noqa: PLW0603 - one process-wide monotonic counter is the point
    candidate = int(ULID())
    with _lock:
        if candidate >> 80 == _last >> 80 and candidate <= _last:
            candidate = _last + 1
        _last = candidate
    return str(ULID.from_int(candidate))
