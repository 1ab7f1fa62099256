"""Audit records of refusals that come in floods (rate limits, quotas), coalesced: at most one record per key (tenant
and bucket) per window, each counting the refusals it stands for.

A 429 is a Policy decision like any other, so it belongs on the audit log; but a client hammering past its limit
refuses thousands of times a second, and one hash-chained record each (a lock of the chain head per append) would
turn every flood into a write load on the store and fill the log with copies. So the first refusal of a key in a
window is recorded, with ``count``: itself and the refusals of that key since the previous record, which were
counted in memory, not recorded. A flood is then one record per second per tenant and bucket (per gateway
replica), and the counts add up to every refusal except those after a key's last record, which the next refusal
of that key carries (and ``aiplane_policy_decisions_total`` counts all of them as they happen).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

WINDOW_S = 1.0


class Coalescer:
    """Which refusals of a key get a record: ``note(key)`` answers the count to record, or None (coalesced)."""

    def __init__(self, window: float = WINDOW_S, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [time of its last record, refusals since it not yet recorded]
        self._state: dict[Hashable, list[float]] = {}

    def note(self, key: Hashable) -> int | None:
        """Count one refusal of ``key``; the number of refusals to record now (this one included), or None when a
        record of ``key`` was written less than ``window`` ago."""
        now = self.clock()
        with self._lock:
            state = self._state.get(key)
            if state is None:
                state = self._state[key] = [float("-inf"), 0.0]
            state[1] += 1
            if now - state[0] < self.window:
                return None
            count = int(state[1])
            state[0], state[1] = now, 0.0
            return count
