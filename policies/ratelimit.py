"""Rate limits per tenant and per priority class: token buckets, in memory, per gateway process.

A tenant's limits are the ``rateLimits`` of the Policies that apply to it (``access.tenants`` names it, or is
empty). A limit without ``priority`` counts every request of the tenant (submissions and model calls); one with a
priority counts that class's submissions only. A request must find a token in every bucket that counts it, and
takes one from each only when it does, so a refused request costs the tenant nothing. Where several Policies limit
the same class, the strictest wins (the lowest rate and, separately, the smallest burst), as for every other part
of a Policy.

The buckets live in the process: N gateway replicas admit up to N times the configured rate. They are checked on
the event loop (one thread), which is what makes the check-then-take below free of races without a lock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from crds.policy import Policy, RateLimit
from policies import metrics
from policies.sources import PolicySet

ALL = "*"  # the bucket key of a limit without a priority class


class _Bucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused: which limit, and when a token will be there again."""

    tenant: str
    priority: str  # the class whose bucket is empty, or ``*`` for the tenant-wide one
    rate: float
    burst: int
    retry_after: float  # seconds until the bucket holds a token again

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` in whole seconds (RFC 9110 delta-seconds), never 0: rounded up."""
        return str(max(1, math.ceil(self.retry_after)))

    def describe(self) -> str:
        scope = "all its requests" if self.priority == ALL else f"{self.priority}-priority submissions"
        return (
            f"tenant {self.tenant!r} is over its rate limit for {scope} ({self.rate:g} per second, burst "
            f"{self.burst}); retry after {self.retry_after_header} s or lower the request rate"
        )


def strictest(limits: Iterable[RateLimit]) -> dict[str, RateLimit]:
    """One limit per priority class (``*`` for the tenant-wide one): the lowest rate and the smallest burst."""
    out: dict[str, RateLimit] = {}
    for limit in limits:
        key = limit.priority or ALL
        seen = out.get(key)
        if seen is None:
            out[key] = limit
        else:
            out[key] = RateLimit(
                priority=limit.priority,
                requests_per_second=min(seen.requests_per_second, limit.requests_per_second),
                burst=min(seen.burst, limit.burst),
            )
    return out


def limits_from_policies(policies: Iterable[Policy]) -> tuple[list[RateLimit], dict[str, list[RateLimit]]]:
    """(limits for every tenant, limits for named tenants) from Policies, as ``RateLimiter`` takes them: a Policy
    whose ``access.tenants`` is empty limits every tenant, otherwise only those named."""
    everyone: list[RateLimit] = []
    named: dict[str, list[RateLimit]] = {}
    for policy in policies:
        spec = policy.spec
        if not spec.rate_limits:
            continue
        tenants = spec.access.tenants if spec.access is not None else []
        if not tenants:
            everyone.extend(spec.rate_limits)
        for tenant in tenants:
            named.setdefault(tenant, []).extend(spec.rate_limits)
    return everyone, named


class RateLimiter:
    """Token buckets per (tenant, priority class). ``take`` answers None (go on) or a ``Refusal`` (429).

    ``limits`` apply to every tenant; ``tenants`` adds limits for named tenants (combined with ``limits``, the
    strictest wins). Without any limit ``take`` is a dict look-up and a return.
    """

    def __init__(
        self,
        limits: Sequence[RateLimit] = (),
        tenants: Mapping[str, Sequence[RateLimit]] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self._default = strictest(limits)
        self._tenants = {tenant: strictest([*limits, *own]) for tenant, own in (tenants or {}).items()}
        self.enabled = bool(self._default or any(self._tenants.values()))
        # (tenant, priority) -> the buckets that count such a request, with their class; made on first use.
        self._buckets: dict[tuple[str, str | None], tuple[tuple[str, RateLimit, _Bucket], ...]] = {}
        self._shared: dict[tuple[str, str], _Bucket] = {}

    @classmethod
    def from_policies(cls, policies: Iterable[Policy]) -> RateLimiter:
        everyone, named = limits_from_policies(policies)
        return cls(everyone, named)

    def take(self, tenant: str, priority: str | None = None) -> Refusal | None:
        """Count one request of ``tenant`` (a submission of class ``priority``, or None for a model call)."""
        if not self.enabled:
            return None
        buckets = self._buckets.get((tenant, priority))
        if buckets is None:
            buckets = self._make(tenant, priority)
        if not buckets:
            return None
        now = self.clock()
        for key, limit, bucket in buckets:
            # The refill, inline (and no min(): a builtin call costs more here): this runs on every request.
            tokens = bucket.tokens + (now - bucket.stamp) * bucket.rate
            tokens = tokens if tokens < bucket.burst else bucket.burst
            bucket.tokens = tokens
            bucket.stamp = now
            if tokens < 1.0:
                metrics.denied("rate_limit")
                return Refusal(tenant, key, limit.requests_per_second, limit.burst, (1.0 - tokens) / bucket.rate)
        for _, _, bucket in buckets:
            bucket.tokens -= 1.0
        return None

    def _make(self, tenant: str, priority: str | None) -> tuple[tuple[str, RateLimit, _Bucket], ...]:
        if len(self._buckets) > 100_000:
            # Tenant names come from credentials, not from the caller; still, never grow without bound.
            self._buckets.clear()
            self._shared.clear()
        limits = self._tenants.get(tenant, self._default)
        now = self.clock()
        made = []
        for key in (ALL, priority) if priority is not None else (ALL,):
            limit = limits.get(key)
            if limit is None:
                continue
            # One bucket per (tenant, class), shared by every (tenant, priority) pair that it counts.
            bucket = self._shared.get((tenant, key))
            if bucket is None:
                bucket = self._shared[(tenant, key)] = _Bucket(limit.requests_per_second, limit.burst, now)
            made.append((key, limit, bucket))
        buckets = tuple(made)
        self._buckets[(tenant, priority)] = buckets
        return buckets


class SharedRateLimiter:
    """A ``RateLimiter`` for threads (Kafka sources) rather than one event loop, rebuilt from ``policies`` on every
    change (a change refills the buckets, as at the gateway). Its buckets are its own: a Kafka source and a gateway
    each admit up to the configured rate, as two gateway replicas do."""

    def __init__(self, policies: PolicySet | None = None, *, limiter: RateLimiter | None = None) -> None:
        """``limiter``: the buckets to start with (tests give one with their own clock); replaced on a change."""
        self._lock = threading.Lock()
        self._limiter = limiter or RateLimiter()
        if policies is not None:
            policies.on_change(self._rebuild)

    def _rebuild(self, policies: tuple[Policy, ...]) -> None:
        limiter = RateLimiter.from_policies(policies)
        with self._lock:
            self._limiter = limiter

    def take(self, tenant: str, priority: str | None = None) -> Refusal | None:
        with self._lock:
            return self._limiter.take(tenant, priority)
