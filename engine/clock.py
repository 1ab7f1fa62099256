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
    return _encode(candidate)


def new_ids(count: int) -> list[str]:
    """``count`` ULIDs at once, as ``new_id`` would make them in one millisecond: the first one random, the others
    each the previous plus one. For batches (a Kafka poll's tasks), where encoding ids one by one showed."""
    global _last  # noqa: PLW0603 - the same counter as new_id's
    if count <= 0:
        return []
    candidate = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    with _lock:
        if candidate >> 80 == _last >> 80 and candidate <= _last:
            candidate = _last + 1
        _last = candidate + count - 1
    # Consecutive values differ in their last two characters (the low 10 bits) but every 1024th: the first 24
    # characters are encoded once per run of those.
    ids: list[str] = []
    value, end = candidate, candidate + count
    while value < end:
        low = value & 1023
        run = min(1024 - low, end - value)
        prefix = _encode(value)[:24]
        ids += [prefix + pair for pair in _PAIRS[low : low + run]]
        value += run
    return ids


def _encode(value: int) -> str:
    """Crockford base32, most significant first: 2 characters, then 12 pairs of 10 bits from a table."""
    head = _CROCKFORD[value >> 125] + _CROCKFORD[(value >> 120) & 31]
    return head + "".join([_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_PAIR_SHIFTS = tuple(range(110, -1, -10))
