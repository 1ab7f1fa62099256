"""Keeping failures from turning into retry storms: a retry budget per downstream, a circuit breaker per endpoint.

Both are in-process (each worker process keeps its own): they protect a downstream from this process's load,
need no coordination, and converge across processes because every process sees the same failures.
A call they hold back is *deferred* (``StepDeferredError``): it does not use up one of the step's attempts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from engine.errors import StepDeferredError

Monotonic = Callable[[], float]


class RetryBudget:
    """Token bucket: every first attempt adds ``ratio`` tokens, every retry spends one.

    Retries are therefore held to about ``ratio`` of recent first attempts (20% by default) once the initial
    ``burst`` is spent; when a downstream fails everything, callers stop multiplying its load.
    """

    def __init__(self, ratio: float = 0.2, burst: float = 10.0) -> None:
        self.ratio = ratio
        self.burst = burst
        self._tokens = burst
        self._lock = threading.Lock()

    @property
    def tokens(self) -> float:
        return self._tokens

    def record_first_attempt(self) -> None:
        with self._lock:
            self._tokens = min(self.burst, self._tokens + self.ratio)

    def try_spend_retry(self) -> bool:
        with self._lock:
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed -> open after ``failure_threshold`` consecutive failures; open -> half-open after ``open_for``;
    half-open lets one trial call through: success closes, failure opens again."""

    def __init__(self, failure_threshold: int = 5, open_for: float = 30.0, clock: Monotonic = time.monotonic) -> None:
        self.failure_threshold = failure_threshold
        self.open_for = open_for
        self.clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._lock = threading.Lock()

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._advance()
            return self._state

    def _advance(self) -> None:
        if self._state is BreakerState.OPEN and self.clock() - self._opened_at >= self.open_for:
            self._state = BreakerState.HALF_OPEN
            self._trial_in_flight = False

    def allow(self) -> float:
        """0 if a call may go now, else the seconds to wait before asking again."""
        with self._lock:
            self._advance()
            if self._state is BreakerState.CLOSED:
                return 0.0
            if self._state is BreakerState.HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return 0.0
            if self._state is BreakerState.OPEN:
                return max(self.open_for - (self.clock() - self._opened_at), 0.001)
            return max(self.open_for / 10, 0.001)  # half-open, trial running: check back soon

    def release_trial(self) -> None:
        """The half-open trial call was not made after all; let the next caller make it."""
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._trial_in_flight = False

    def record_success(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
                self._state = BreakerState.OPEN
                self._opened_at = self.clock()
                self._trial_in_flight = False


@dataclass(frozen=True)
class ResilienceConfig:
    retry_ratio: float = 0.2
    retry_burst: float = 10.0
    failure_threshold: int = 5
    open_for: float = 30.0
    #: How long a retry waits when the budget is spent (first attempts of other tasks refill it meanwhile).
    budget_wait: float = 1.0


class Resilience:
    """The budgets and breakers of one process, created on first use per downstream / endpoint."""

    def __init__(self, config: ResilienceConfig | None = None, clock: Monotonic = time.monotonic) -> None:
        self.config = config or ResilienceConfig()
        self.clock = clock
        self._budgets: dict[str, RetryBudget] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def budget(self, downstream: str) -> RetryBudget:
        with self._lock:
            budget = self._budgets.get(downstream)
            if budget is None:
                budget = self._budgets[downstream] = RetryBudget(self.config.retry_ratio, self.config.retry_burst)
            return budget

    def breaker(self, endpoint: str) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(endpoint)
            if breaker is None:
                breaker = self._breakers[endpoint] = CircuitBreaker(
                    self.config.failure_threshold, self.config.open_for, self.clock
                )
            return breaker

    def admit(self, downstream: str, endpoint: str, *, is_retry: bool) -> None:
        """Raise ``StepDeferredError`` if the call must not go now; otherwise account for it."""
        wait = self.breaker(endpoint).allow()
        if wait > 0:
            raise StepDeferredError(f"circuit open for {endpoint}", timedelta(seconds=wait))
        budget = self.budget(downstream)
        if not is_retry:
            budget.record_first_attempt()
        elif not budget.try_spend_retry():
            # Give the half-open trial back if we took it: this call is not going out.
            self.breaker(endpoint).release_trial()
            raise StepDeferredError(f"retry budget for {downstream} spent", timedelta(seconds=self.config.budget_wait))
