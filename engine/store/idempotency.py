"""Idempotency records for the gateway (Stripe's design): the key, the stored first response, the mismatch error.

``claim`` before doing the work, ``complete`` with the response afterwards (or ``release`` if the request failed
in a way the client should be able to retry). Keys are scoped per tenant and kept ``ttl`` (24 h by default).
Every call is its own short write transaction, so concurrent claims of one key are decided by the database:
the primary key lets exactly one insert win; the others read the winner's row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.clock import Clock, utcnow
from engine.errors import IdempotencyConflictError, IdempotencyMismatchError, InvalidRequestError
from engine.store.database import Database, dialect_insert
from engine.store.schema import idempotency_keys as keys
from engine.store.types import dumps

DEFAULT_TTL = timedelta(hours=24)
# A claim still in flight after this long was abandoned (its process died); the key can be claimed again.
DEFAULT_IN_FLIGHT_TIMEOUT = timedelta(minutes=5)
MAX_KEY_LENGTH = 255

IN_FLIGHT = "in_flight"
DONE = "done"


def request_hash(body: Any) -> str:
    """A stable hash of a request body (JSON value or raw bytes) for mismatch detection."""
    data = body if isinstance(body, bytes) else dumps(body).encode()
    return hashlib.sha256(data).hexdigest()


def check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidRequestError(
            f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} characters long", field="Idempotency-Key"
        )


@dataclass(frozen=True)
class Claim:
    """The outcome of a successful ``claim``.

    ``owner``: this caller claimed the key and must do the work, then ``complete`` (or ``release``) it.
    Otherwise the request was done before and ``response`` is the stored first response to return as is.
    """

    owner: bool
    response: Any = None


class IdempotencyStore:
    def __init__(
        self,
        db: Database,
        *,
        ttl: timedelta = DEFAULT_TTL,
        in_flight_timeout: timedelta = DEFAULT_IN_FLIGHT_TIMEOUT,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.ttl = ttl
        self.in_flight_timeout = in_flight_timeout
        self.clock = clock

    def claim(self, tenant: str, key: str, body_hash: str) -> Claim:
        """Claim ``key`` for a request whose body hashes to ``body_hash``.

        Raises ``IdempotencyMismatchError`` if the key was used with another body, ``IdempotencyConflictError``
        while the first request with this key is still in flight.
        """
        check_key(key)
        with self.db.write() as conn:
            return self.claim_in(conn, self.record(tenant, key, body_hash, self.clock()))

    def record(self, tenant: str, key: str, body_hash: str, now: datetime, response: Any = None) -> dict[str, Any]:
        """The row claiming ``key``: in flight, or already done with ``response`` when the caller knows it up
        front (then claim and completion are one write)."""
        return {
            "tenant": tenant,
            "key": key,
            "request_hash": body_hash,
            "state": IN_FLIGHT if response is None else DONE,
            "response": response,
            "created_at": now,
            "updated_at": now,
            "locked_until": now + self.in_flight_timeout if response is None else None,
            "expires_at": now + self.ttl,
        }

    def claim_in(self, conn: sa.Connection, record: dict[str, Any]) -> Claim:
        """``claim`` within the caller's write transaction, with a row made by ``record``."""
        # RETURNING rather than rowcount: drivers disagree on the row count of an INSERT that did nothing.
        inserted = conn.execute(
            dialect_insert(conn, keys).values(record).on_conflict_do_nothing().returning(keys.c.key)
        ).scalar()
        if inserted is not None:
            return Claim(owner=True)
        row = conn.execute(sa.select(keys).where(keys.c.tenant == record["tenant"], keys.c.key == record["key"])).one()
        return self.settle(conn, row, record)

    def settle(self, conn: sa.Connection, row: sa.Row[Any], record: dict[str, Any]) -> Claim:
        """The answer to a claim that found ``row`` already there: take it over when it expired or was abandoned
        mid-flight, else the stored response, a mismatch or a conflict."""
        now = record["created_at"]
        if row.expires_at <= now or (row.state == IN_FLIGHT and row.locked_until <= now):
            # Expired, or abandoned mid-flight: take it over, conditionally, so two callers cannot both win.
            taken = conn.execute(
                sa.update(keys)
                .where(
                    keys.c.tenant == row.tenant,
                    keys.c.key == row.key,
                    keys.c.updated_at == row.updated_at,
                    keys.c.state == row.state,
                )
                .values({k: v for k, v in record.items() if k not in ("tenant", "key")})
            )
            if taken.rowcount == 1:
                return Claim(owner=True)
            raise IdempotencyConflictError(
                "a request with this Idempotency-Key is being processed; retry later", key=row.key
            )
        if row.request_hash != record["request_hash"]:
            raise IdempotencyMismatchError(
                "this Idempotency-Key was used with a different request body; use a new key for a new request",
                key=row.key,
            )
        if row.state == IN_FLIGHT:
            raise IdempotencyConflictError(
                "a request with this Idempotency-Key is still being processed; retry later", key=row.key
            )
        return Claim(owner=False, response=row.response)

    def complete(self, tenant: str, key: str, response: Any) -> bool:
        """Store the first response for ``key``; False if the claim was lost (expired and taken over)."""
        now = self.clock()
        with self.db.write() as conn:
            done = conn.execute(
                sa.update(keys)
                .where(keys.c.tenant == tenant, keys.c.key == key, keys.c.state == IN_FLIGHT)
                .values(state=DONE, response=response, updated_at=now, locked_until=None)
            )
            return done.rowcount == 1

    def release(self, tenant: str, key: str) -> None:
        """Forget an in-flight claim (the request failed without a response worth replaying)."""
        with self.db.write() as conn:
            conn.execute(sa.delete(keys).where(keys.c.tenant == tenant, keys.c.key == key, keys.c.state == IN_FLIGHT))

    def purge_expired(self, now: datetime | None = None) -> int:
        with self.db.write() as conn:
            return conn.execute(sa.delete(keys).where(keys.c.expires_at <= (now or self.clock()))).rowcount
