"""Deliberate latency, failures and prediction drift, for benchmarks and canary-analysis tests.

``AIPLANE_CLAIMS_DELAY_MS``: milliseconds added to every ``extract`` and ``explain`` request (default 0).
``AIPLANE_CLAIMS_ERROR_RATE``: share of those requests, 0 to 1, answered with HTTP 500 (default 0).
``AIPLANE_CLAIMS_DRIFT_RATE``: share of ``extract`` answers, 0 to 1, whose ``claim_type`` is replaced by
``AIPLANE_CLAIMS_DRIFT_CLASS`` (default 0: off), as a model that drifted towards one class would answer; the
scores and explanation stay the model's. ``AIPLANE_CLAIMS_DRIFT_CLASS``: one of the claim types (default travel).

Failures and drifted answers are spread evenly and deterministically, not drawn at random: request ``n``
(counting from 1, per worker process; drift counts only the answers that did not fail) is picked when
``floor(n * rate)`` moves up, so with a rate of 0.25 every fourth request is and any run of requests sees the
configured share to within one request. Tests can count on the numbers.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from claims_model import CLAIM_TYPES

DELAY_ENV = "AIPLANE_CLAIMS_DELAY_MS"
ERROR_RATE_ENV = "AIPLANE_CLAIMS_ERROR_RATE"
DRIFT_RATE_ENV = "AIPLANE_CLAIMS_DRIFT_RATE"
DRIFT_CLASS_ENV = "AIPLANE_CLAIMS_DRIFT_CLASS"


@dataclass
class EvenShare:
    """Picks ``rate`` of the calls to ``next``, evenly spread (see the module's docstring); thread-safe."""

    rate: Fraction
    _counted: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def next(self) -> bool:
        if self.rate == 0:
            return False
        with self._lock:
            self._counted += 1
            n = self._counted
        return math.floor(n * self.rate) > math.floor((n - 1) * self.rate)


def _share(name: str, value: float) -> Fraction:
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ValueError(f"{name} must be a share between 0 and 1, got {value!r}")
    return Fraction(str(value))  # exact, so 0.1 picks exactly every tenth request


@dataclass
class FaultInjector:
    """Adds ``delay_ms`` to each request, fails ``error_rate`` of them and answers ``drift_class`` for
    ``drift_rate`` of the rest, evenly spread."""

    delay_ms: float = 0.0
    error_rate: float = 0.0
    drift_rate: float = 0.0
    drift_class: str = "travel"
    _failures: EvenShare = field(init=False, repr=False, compare=False)
    _drifts: EvenShare = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delay_ms) and self.delay_ms >= 0):
            raise ValueError(f"{DELAY_ENV} must be a number of milliseconds >= 0, got {self.delay_ms!r}")
        if self.drift_class not in CLAIM_TYPES:
            raise ValueError(f"{DRIFT_CLASS_ENV} must be one of {', '.join(CLAIM_TYPES)}, got {self.drift_class!r}")
        self._failures = EvenShare(_share(ERROR_RATE_ENV, self.error_rate))
        self._drifts = EvenShare(_share(DRIFT_RATE_ENV, self.drift_rate))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FaultInjector:
        """Read the variables; unset or empty means the default. A number that is not one raises ``ValueError``."""
        env = os.environ if env is None else env

        def number(name: str) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return 0.0
            try:
                return float(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {raw!r}") from None

        return cls(
            delay_ms=number(DELAY_ENV),
            error_rate=number(ERROR_RATE_ENV),
            drift_rate=number(DRIFT_RATE_ENV),
            drift_class=env.get(DRIFT_CLASS_ENV, "").strip() or cls.drift_class,
        )

    @property
    def delay_seconds(self) -> float:
        return self.delay_ms / 1000.0

    def should_fail(self) -> bool:
        """Count one request and say whether it is one of the failing share."""
        return self._failures.next()

    def claim_type(self, predicted: str) -> str:
        """The claim type to answer for one answer that did not fail: ``predicted``, or the drift class."""
        return self.drift_class if self._drifts.next() else predicted
