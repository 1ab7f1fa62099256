"""The global token buckets of rate limits, in the store: what every gateway replica leases tokens from
(``policies.ratelimit.Budget``).

One row per (tenant, priority class). A lease is one upsert: refill the row's tokens for the time since its last
refill at the Policy's rate, cap them at its burst, add back what the replica returns, and grant up to what it
asks for when a whole token is there. On PostgreSQL the upsert locks the row, so concurrent leases of replicas
queue on it and each sees the other's result; ``RETURNING`` hands back the grant and the tokens left in the same
round trip. Time is the database server's, so replicas whose clocks disagree still refill one bucket alike (a
``clock`` given to the store replaces it, for tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from engine.store.database import Database, dialect_insert
from engine.store.schema import rate_buckets as buckets
from policies.ratelimit import Lease


def _least(a: Any, b: Any) -> Any:
    # CASE rather than LEAST/MIN: PostgreSQL and SQLite name the two-argument minimum differently.
    return sa.case((a < b, a), else_=b)


def _greatest(a: Any, b: Any) -> Any:
    return sa.case((a > b, a), else_=b)


def _server_now(dialect: str) -> Any:
    if dialect == "postgresql":
        return sa.extract("epoch", sa.func.clock_timestamp())
    return (sa.func.julianday("now") - 2440587.5) * 86400.0


class RateBudgetStore:
    def __init__(self, db: Database, *, clock: Callable[[], float] | None = None) -> None:
        self.db = db
        self.clock = clock
        self._statement = self._build(db.dialect)

    def _build(self, dialect: str) -> Any:
        now = sa.bindparam("now", type_=sa.Float) if self.clock is not None else _server_now(dialect)
        rate = sa.bindparam("rate", type_=sa.Float)
        burst = sa.bindparam("burst", type_=sa.Float)
        want = sa.bindparam("want", type_=sa.Float)
        returned = sa.bindparam("returned", type_=sa.Float)
        # The tokens there now (refilled, returned, capped), then the grant: a whole token at least, or nothing.
        there = _least(burst, buckets.c.tokens + _greatest(now - buckets.c.stamp, 0.0) * rate + returned)
        grant = sa.case((there >= 1.0, _least(want, there)), else_=0.0)
        first = _least(want, burst)  # a new bucket starts full
        insert = dialect_insert(dialect, buckets).values(
            tenant=sa.bindparam("tenant"), bucket=sa.bindparam("bucket"), tokens=burst - first, stamp=now, granted=first
        )
        return insert.on_conflict_do_update(
            index_elements=[buckets.c.tenant, buckets.c.bucket],
            set_={"tokens": there - grant, "stamp": now, "granted": grant},
        ).returning(buckets.c.granted, buckets.c.tokens)

    def lease(self, tenant: str, bucket: str, *, rate: float, burst: int, want: float, returned: float) -> Lease:
        params: dict[str, Any] = {
            "tenant": tenant,
            "bucket": bucket,
            "rate": rate,
            "burst": float(burst),
            "want": want,
            "returned": returned,
        }
        if self.clock is not None:
            params["now"] = self.clock()
        with self.db.write() as conn:
            granted, left = conn.execute(self._statement, params).one()
        return Lease(granted=granted, retry_after=0.0 if granted >= 1.0 else (1.0 - left) / rate, left=left)
