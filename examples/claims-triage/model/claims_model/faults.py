"""Deliberate latency and failures, for benchmarks and canary-analysis tests.

``AIPLANE_CLAIMS_DELAY_MS``: milliseconds added to every ``extract`` and ``explain`` request (default 0).
``AIPLANE_CLAIMS_ERROR_RATE``: share of those requests, 0 to 1, answered with HTTP 500 (default 0).

Failures are spread evenly and deterministically, not drawn at random: request ``n`` (counting from 1, per
worker process) fails when ``floor(n * rate)`` moves up, so with a rate of 0.25 every fourth request fails and any
run of requests sees the configured share to within one request. Tests can count on the numbers.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

DELAY_ENV = "AIPLANE_CLAIMS_DELAY_MS"
ERROR_RATE_ENV = "AIPLANE_CLAIMS_ERROR_RATE"


@dataclass
class FaultInjector:
    """Adds ``delay_ms`` to each request and fails ``error_rate`` of them, evenly spread."""

    delay_ms: float = 0.0
    error_rate: float = 0.0
    _served: int = field(default=0, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _rate: Fraction = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delay_ms) and self.delay_ms >= 0):
            raise ValueError(f"{DELAY_ENV} must be a number of milliseconds >= 0, got {self.delay_ms!r}")
        if not (math.isfinite(self.error_rate) and 0 <= self.error_rate <= 1):
            raise ValueError(f"{ERROR_RATE_ENV} must be a share between 0 and 1, got {self.error_rate!r}")
        self._rate = Fraction(str(self.error_rate))  # exact, so 0.1 fails exactly every tenth request

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FaultInjector:
        """Read the two variables; unset or empty means 0. A value that is not a number raises ``ValueError``."""
        env = os.environ if env is None else env

        def number(name: str) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return 0.0
            try:
                return float(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {raw!r}") from None

        return cls(delay_ms=number(DELAY_ENV), error_rate=number(ERROR_RATE_ENV))

    @property
    def delay_seconds(self) -> float:
        return self.delay_ms / 1000.0

    def should_fail(self) -> bool:
        """Count one request and say whether it is one of the failing share."""
        if self._rate == 0:
            return False
        with self._lock:
            self._served += 1
            n = self._served
        return math.floor(n * self._rate) > math.floor((n - 1) * self._rate)
