"""Idempotency records: the first response is stored, other bodies mismatch, in-flight requests conflict."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from engine import IdempotencyConflictError, IdempotencyMismatchError, InvalidRequestError, request_hash
from engine.store.database import Database
from engine.store.idempotency import IdempotencyStore
from engine.store.migrate import upgrade
from tests.fixtures.clocks import SettableClock


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url, sqlite_synchronous="NORMAL")
    upgrade(database)
    yield database
    database.dispose()


def test_claim_complete_replay_mismatch_conflict(db: Database) -> None:
    clock = SettableClock(datetime(2026, 1, 1, tzinfo=UTC))
    store = IdempotencyStore(db, ttl=timedelta(hours=24), in_flight_timeout=timedelta(minutes=5), clock=clock)
    body = request_hash({"input": {"a": 1}})

    assert store.claim("acme", "k1", body).owner
    with pytest.raises(IdempotencyConflictError):
        store.claim("acme", "k1", body)  # the first request is still in flight
    with pytest.raises(IdempotencyMismatchError):
        store.claim("acme", "k1", request_hash({"input": {"a": 2}}))

    response = {"status": 202, "body": {"id": "task-1"}}
    assert store.complete("acme", "k1", response)
    replay = store.claim("acme", "k1", body)
    assert (replay.owner, replay.response) == (False, response)
    with pytest.raises(IdempotencyMismatchError):
        store.claim("acme", "k1", request_hash({"input": {"a": 2}}))

    # Keys are per tenant.
    assert store.claim("globex", "k1", request_hash({"other": True})).owner

    # After the TTL the key is forgotten and may be used for a new request.
    clock.now += timedelta(hours=24, seconds=1)
    assert store.claim("acme", "k1", request_hash({"input": {"a": 2}})).owner


def test_abandoned_claims_can_be_taken_over_and_released(db: Database) -> None:
    clock = SettableClock(datetime(2026, 1, 1, tzinfo=UTC))
    store = IdempotencyStore(db, in_flight_timeout=timedelta(seconds=30), clock=clock)
    body = request_hash(b"raw body")
    assert store.claim("acme", "k", body).owner
    clock.now += timedelta(seconds=31)  # the first caller died without completing
    assert store.claim("acme", "k", body).owner
    store.release("acme", "k")
    assert store.claim("acme", "k", body).owner
    with pytest.raises(InvalidRequestError):
        store.claim("acme", "x" * 256, body)


def test_concurrent_claims_have_exactly_one_winner(db: Database) -> None:
    store = IdempotencyStore(db)
    body = request_hash({"same": "body"})
    start = threading.Barrier(100)

    def claim(_: int) -> str:
        start.wait()
        try:
            return "owner" if store.claim("acme", "hot-key", body).owner else "replayed"
        except IdempotencyConflictError:
            return "conflict"

    with ThreadPoolExecutor(100) as pool:
        outcomes = list(pool.map(claim, range(100)))
    assert outcomes.count("owner") == 1
    assert outcomes.count("conflict") == 99
