"""Time and ids: UTC everywhere, sortable ids.

The clock is injectable so tests and simulations can move time without sleeping; every timestamp the engine
writes comes from one ``Clock``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

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
    # 48 bits of milliseconds, 80 random bits (the ULID layout), encoded here rather than through ULID objects:
    # several ids are made per step, and the objects cost several times the encoding.
    candidate = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    with _lock:
        if candidate >> 80 == _last >> 80 and candidate <= _last:
            candidate = _last + 1
        _last = candidate
    # Crockford base32, most significant first: 2 characters, then 12 pairs of 10 bits from a table.
    head = _CROCKFORD[candidate >> 125] + _CROCKFORD[(candidate >> 120) & 31]
    return head + "".join([_PAIRS[(candidate >> shift) & 1023] for shift in _PAIR_SHIFTS])


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_PAIR_SHIFTS = tuple(range(110, -1, -10))
