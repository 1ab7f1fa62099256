"""Rate limits per tenant and per priority class: token buckets, in memory, per gateway process.

A tenant's limits are the ``rateLimits`` of the Policies that apply to it (``access.tenants`` names it, or is
empty). A limit without ``priority`` counts every request of the tenant (submissions and model calls); one with a
priority counts that class's submissions only. A request must find a token in every bucket that counts it, and
takes one from each only when it does, so a refused request costs the tenant nothing. Where several Policies limit
the same class, the strictest wins (the lowest rate and, separately, the smallest burst), as for every other part
of a Policy.

Where the buckets live:

- Without a ``Budget`` (SQLite: ``aiplane dev``, one process) they are in the process, checked on the event loop.
- With one (PostgreSQL: the chart's gateway replicas) the limit holds across replicas, the way Envoy's global rate
  limit does, but without a store round trip per request: the bucket itself is a row in the store
  (``engine.store.ratelimit``), and each replica leases tokens from it in chunks of about a tenth of a second of
  the rate (``LEASE_SECONDS``; one token at low rates), spends them locally, and leases again when they run out.
  A lease returns what the previous one left unspent, and leased tokens go stale after ``LEASE_TTL`` seconds, so
  a replica that fell idle cannot spend old tokens on top of a refilled bucket. The sustained rate is then exact
  across any number of replicas; a burst can go over by at most what each replica holds (one chunk). An empty
  store bucket tells the replica how long until the next token, and the replica refuses locally until a whole
  chunk is due instead of asking again per request (a replica over its limit leases about once a LEASE_SECONDS).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from crds.policy import Policy, RateLimit
from policies import metrics
from policies.sources import PolicySet

ALL = "*"  # the bucket key of a limit without a priority class


LEASE_SECONDS = 0.1  # a lease asks for this much of the rate (at least one token, at most the burst)
LEASE_TTL = 1.0  # leased tokens unspent after this long are returned, not spent


@dataclass(frozen=True)
class Lease:
    """What a ``Budget`` answered: tokens granted (possibly fractional, possibly 0) and, when it could not grant a
    whole token, the seconds until the store bucket holds one."""

    granted: float
    retry_after: float = 0.0
    left: float = 0.0  # the tokens the store bucket kept (under one when the grant fell short)


class Budget(Protocol):
    """The global token buckets (``engine.store.ratelimit.RateBudgetStore``): ``lease`` refills the bucket of
    (``tenant``, ``bucket``) at ``rate`` up to ``burst``, adds ``returned`` back, and grants up to ``want`` tokens
    when a whole one is there. Blocking (a database round trip)."""

    def lease(self, tenant: str, bucket: str, *, rate: float, burst: int, want: float, returned: float) -> Lease: ...


class _Leased:
    """A replica's share of a global bucket: tokens held until ``expires``, or refusals until ``empty_until``."""

    __slots__ = ("empty_until", "expires", "held")

    def __init__(self) -> None:
        self.held = 0.0
        self.expires = 0.0
        self.empty_until = 0.0


class _Lease:
    """The sentinel ``RateLimiter.take_local`` answers when a bucket needs a lease from the store first."""

    __slots__ = ()


LEASE = _Lease()


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


def limiting(policies: Iterable[Policy], tenant: str, reason: str, bucket: str) -> list[Policy]:
    """The Policies behind a 429 of ``tenant``, for its audit record: for ``rate-limited`` those with a rate limit
    of ``bucket`` (a priority class or ``*``), for ``quota-exceeded`` those with a quota of ``bucket``'s class
    (``tasks-in-flight/<class>``; ``tasks-in-flight``: all classes); of each, those that apply to the tenant
    (``access.tenants`` names it, or is empty)."""
    out = []
    for policy in policies:
        spec = policy.spec
        if reason == "quota-exceeded":  # bucket tasks-in-flight, or tasks-in-flight/<priority class>
            relevant = spec.quota is not None and spec.quota.priority == (bucket.partition("/")[2] or None)
        else:
            relevant = any((limit.priority or ALL) == bucket for limit in spec.rate_limits)
        tenants = spec.access.tenants if spec.access is not None else []
        if relevant and (not tenants or tenant in tenants):
            out.append(policy)
    return out


class RateLimiter:
    """Token buckets per (tenant, priority class). ``take`` answers None (go on) or a ``Refusal`` (429).

    ``limits`` apply to every tenant; ``tenants`` adds limits for named tenants (combined with ``limits``, the
    strictest wins). Without any limit ``take`` is a dict look-up and a return. With a ``budget`` the buckets are
    global (see the module's docstring): ``take_local`` answers from what this process holds, or ``LEASE`` when a
    bucket needs a lease first, which ``take`` (blocking; from a thread) gets.
    """

    def __init__(
        self,
        limits: Sequence[RateLimit] = (),
        tenants: Mapping[str, Sequence[RateLimit]] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        budget: Budget | None = None,
    ) -> None:
        self.clock = clock
        self.budget = budget
        self._default = strictest(limits)
        self._tenants = {tenant: strictest([*limits, *own]) for tenant, own in (tenants or {}).items()}
        self.enabled = bool(self._default or any(self._tenants.values()))
        # (tenant, priority) -> the buckets that count such a request, with their class; made on first use.
        self._buckets: dict[tuple[str, str | None], tuple[tuple[str, RateLimit, _Bucket], ...]] = {}
        self._shared: dict[tuple[str, str], _Bucket] = {}
        self._leased: dict[tuple[str, str | None], tuple[tuple[str, RateLimit, _Leased], ...]] = {}
        self._leased_shared: dict[tuple[str, str], _Leased] = {}
        # Leases run in threads while the event loop spends tokens: the lock guards the held counts (never I/O).
        self._lock = threading.Lock()

    @classmethod
    def from_policies(cls, policies: Iterable[Policy], *, budget: Budget | None = None) -> RateLimiter:
        everyone, named = limits_from_policies(policies)
        return cls(everyone, named, budget=budget)

    def take(self, tenant: str, priority: str | None = None) -> Refusal | None:
        """Count one request of ``tenant`` (a submission of class ``priority``, or None for a model call); with a
        budget this may lease from the store, so call it where blocking is fine."""
        for _ in range(3):
            outcome = self.take_local(tenant, priority)
            if not isinstance(outcome, _Lease):
                return outcome
            self._lease(tenant, priority)
        # Other threads spent each lease before this one could: the budget is being drained, so come back later.
        return self._refusal(tenant, priority)

    def take_local(self, tenant: str, priority: str | None = None) -> Refusal | _Lease | None:
        """``take`` without I/O: None or a ``Refusal`` as ``take``, or ``LEASE`` when the budget must be asked."""
        if not self.enabled:
            return None
        if self.budget is not None:
            return self._take_leased(tenant, priority)
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

    def _take_leased(self, tenant: str, priority: str | None) -> Refusal | _Lease | None:
        shares = self._leased.get((tenant, priority))
        if shares is None:
            shares = self._make_leased(tenant, priority)
        if not shares:
            return None
        now = self.clock()
        with self._lock:
            need = False
            for key, limit, share in shares:
                if share.held >= 1.0 and now < share.expires:
                    continue
                if now < share.empty_until:
                    metrics.denied("rate_limit")
                    return Refusal(tenant, key, limit.requests_per_second, limit.burst, share.empty_until - now)
                need = True
            if need:
                return LEASE
            for _, _, share in shares:
                share.held -= 1.0
        return None

    def _lease(self, tenant: str, priority: str | None) -> None:
        budget = self.budget
        assert budget is not None
        for key, limit, share in self._leased.get((tenant, priority), ()):
            now = self.clock()
            with self._lock:
                if (share.held >= 1.0 and now < share.expires) or now < share.empty_until:
                    continue
                # Whatever is held goes back with the lease (less than a token, or stale ones).
                returned, share.held = share.held, 0.0
            rate = limit.requests_per_second
            want = min(float(limit.burst), max(1.0, math.ceil(rate * LEASE_SECONDS)))
            answer = budget.lease(tenant, key, rate=rate, burst=limit.burst, want=want, returned=returned)
            now = self.clock()
            with self._lock:
                share.held += answer.granted
                share.expires = now + LEASE_TTL
                if answer.granted < want:
                    # The store is (nearly) dry: spend what came, then refuse locally until a whole lease is due
                    # rather than lease again per token. At saturation a replica leases about twice a LEASE_SECONDS,
                    # and the tokens wait in the store meanwhile (the burst holds at least a lease): none are lost.
                    share.empty_until = now + max((want - answer.left) / rate, 0.001)

    def _refusal(self, tenant: str, priority: str | None) -> Refusal:
        now = self.clock()
        shares = self._leased.get((tenant, priority), ())
        key, limit, share = next((entry for entry in shares if entry[2].held < 1.0), shares[0])
        metrics.denied("rate_limit")
        wait = max(share.empty_until - now, 1.0 / limit.requests_per_second)
        return Refusal(tenant, key, limit.requests_per_second, limit.burst, wait)

    def _classes(self, tenant: str, priority: str | None) -> list[tuple[str, RateLimit]]:
        limits = self._tenants.get(tenant, self._default)
        keys = (ALL, priority) if priority is not None else (ALL,)
        return [(key, limits[key]) for key in keys if key in limits]

    def _make_leased(self, tenant: str, priority: str | None) -> tuple[tuple[str, RateLimit, _Leased], ...]:
        with self._lock:
            if len(self._leased) > 100_000:
                self._leased.clear()
                self._leased_shared.clear()
            made = []
            for key, limit in self._classes(tenant, priority):
                share = self._leased_shared.get((tenant, key))
                if share is None:
                    share = self._leased_shared[(tenant, key)] = _Leased()
                made.append((key, limit, share))
            shares = tuple(made)
            self._leased[(tenant, priority)] = shares
            return shares

    def _make(self, tenant: str, priority: str | None) -> tuple[tuple[str, RateLimit, _Bucket], ...]:
        if len(self._buckets) > 100_000:
            # Tenant names come from credentials, not from the caller; still, never grow without bound.
            self._buckets.clear()
            self._shared.clear()
        now = self.clock()
        made = []
        for key, limit in self._classes(tenant, priority):
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
    change (a change refills the buckets, as at the gateway). With a ``budget`` its buckets are the global ones the
    gateways lease from, so a Kafka source and the gateways share one limit; without one they are its own."""

    def __init__(
        self,
        policies: PolicySet | None = None,
        *,
        limiter: RateLimiter | None = None,
        budget: Budget | None = None,
    ) -> None:
        """``limiter``: the buckets to start with (tests give one with their own clock); replaced on a change."""
        self._lock = threading.Lock()
        self._budget = budget
        self._limiter = limiter or RateLimiter(budget=budget)
        if policies is not None:
            policies.on_change(self._rebuild)

    def _rebuild(self, policies: tuple[Policy, ...]) -> None:
        limiter = RateLimiter.from_policies(policies, budget=self._budget)
        with self._lock:
            self._limiter = limiter

    def take(self, tenant: str, priority: str | None = None) -> Refusal | None:
        with self._lock:
            return self._limiter.take(tenant, priority)
