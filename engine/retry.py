"""Retry decisions: which failures are retried and how long to wait. Pure functions of the step's retry spec."""

from __future__ import annotations

import random
from datetime import timedelta

from crds.workflow import Backoff, Retry
from engine.durations import parse_duration
from engine.errors import StepError


def backoff_delay(backoff: Backoff, failed_attempt: int, rng: random.Random | None = None) -> timedelta:
    """Delay before the attempt after ``failed_attempt`` (1-based).

    ``initial * multiplier^(n-1)``, plus up to ``jitter`` of itself at random (so retries of many tasks that
    failed together spread out instead of arriving together), capped at ``max``.
    """
    initial = parse_duration(backoff.initial).total_seconds()
    ceiling = parse_duration(backoff.max).total_seconds()
    # Exponent capped: multiplier**n overflows float long before it matters, the cap applies anyway.
    delay = min(initial * backoff.multiplier ** min(failed_attempt - 1, 64), ceiling)
    spread = (rng or random).random() * backoff.jitter * delay
    return timedelta(seconds=min(delay + spread, ceiling))


def is_retryable(error: StepError, retry: Retry) -> bool:
    """Retryable by the executor's classification, unless the workflow lists the kind as non-retryable."""
    return error.retryable and error.kind not in retry.non_retryable


def attempts_left(retry: Retry, attempts_used: int) -> int:
    return max(retry.max_attempts - attempts_used, 0)


def retry_delay(error: StepError, retry: Retry, failed_attempt: int, rng: random.Random | None = None) -> timedelta:
    """The backoff, but never shorter than what the downstream asked for (HTTP Retry-After)."""
    delay = backoff_delay(retry.backoff, failed_attempt, rng)
    if error.retry_after is not None and error.retry_after > delay:
        return error.retry_after
    return delay
