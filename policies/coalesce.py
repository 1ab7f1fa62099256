"""Audit records of refusals that come in floods (rate limits, quotas), coalesced: at most one record per key (tenant
and bucket) per window, each counting the refusals it stands for.

A 429 is a Policy decision like any other, so it belongs on the audit log; but a client hammering past its limit
refuses thousands of times a second, and one hash-chained record each (a lock of the chain head per append) would
turn every flood into a write load on the store and fill the log with copies. So the first refusal of a key in a
window is recorded, with ``count``: itself and the refusals of that key since the previous record, which were
counted in memory, not recorded. A flood is then one record per second per tenant and bucket (per gateway
replica), and the counts add up to every refusal: those after a key's last record are carried by its next refusal's
record, or written by ``drain`` when the process stops (``aiplane_policy_decisions_total`` counts every one as it
happens).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

WINDOW_S = 1.0


class Coalescer:
    """Which refusals of a key get a record: ``note(key)`` answers the count to record, or None (coalesced)."""

    def __init__(self, window: float = WINDOW_S, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [time of its last record, refusals since it not yet recorded]
        self._state: dict[Hashable, list[float]] = {}
        self._last: dict[Hashable, Any] = {}  # key -> what its latest refusal said, for ``drain``

    def note(self, key: Hashable, info: Any = None) -> int | None:
        """Count one refusal of ``key`` (``info``: what it said, kept for ``drain``); the number of refusals to
        record now (this one included), or None when a record of ``key`` was written less than ``window`` ago."""
        now = self.clock()
        with self._lock:
            state = self._state.get(key)
            if state is None:
                state = self._state[key] = [float("-inf"), 0.0]
            state[1] += 1
            if now - state[0] < self.window:
                self._last[key] = info
                return None
            count = int(state[1])
            state[0], state[1] = now, 0.0
            self._last.pop(key, None)
            return count

    def overdue(self) -> list[tuple[Hashable, int, Any]]:
        """(key, count, info) of every key whose uncounted decisions have waited a whole window since its last
        record, which are then recorded as far as this object knows: asked when some record is written anyway, so
        a key that went quiet (or whose Policies changed, for keys naming their versions) does not hold its count
        until ``drain``."""
        now = self.clock()
        with self._lock:
            due = [
                (key, int(state[1]), self._last.pop(key, None))
                for key, state in self._state.items()
                if state[1] and now - state[0] >= self.window
            ]
            for key, _, _ in due:
                self._state[key][:] = [now, 0.0]
            return due

    def drain(self) -> list[tuple[Hashable, int, Any]]:
        """(key, count, info of its latest refusal) of every key with refusals not yet recorded, which are then
        recorded as far as this object knows: for a process on its way out, so the counts add up."""
        with self._lock:
            pending = [(key, int(state[1]), self._last.get(key)) for key, state in self._state.items() if state[1]]
            for state in self._state.values():
                state[1] = 0.0
            self._last.clear()
            return pending
