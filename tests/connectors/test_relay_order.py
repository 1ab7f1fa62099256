"""Several outbox relays on one PostgreSQL store, as every worker runs its own: each task's events reach Kafka once
each and in the order the store wrote them.

The relays are real (each with its own connection pool and its own producer, as separate worker processes have),
on the real broker and the session's PostgreSQL; events are written while they run, a round per task at a time,
as workers advance tasks. Small batches spread a task's events over many of them, so relays that claimed batches
side by side and published whichever finished first would interleave one task's events out of order.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.kafka import KafkaBus, codec
from engine.bus import OutboxRelay
from engine.clock import new_id
from engine.store import outbox
from engine.store.database import Database
from engine.store.migrate import upgrade
from engine.store.schema import events
from tests.connectors.kafkaio import read_to_end
from tests.fixtures.kafka import Kafka

pytestmark = pytest.mark.integration

TASKS = 10
ROUNDS = 20  # events per task
RELAYS = 6
# The relays' batches side by side (RELAYS * BATCH events) span more than one round (TASKS events): concurrent
# batches hold events of the same tasks, which is when out-of-order publishing can happen at all.
BATCH = 3


@pytest.fixture
def store(pg_url: str) -> Iterator[Database]:
    db = Database(pg_url)
    upgrade(db)
    yield db
    db.dispose()


def write_rounds(db: Database, tasks: list[str], done: threading.Event) -> None:
    """Each round one event per task, in a transaction of its own, while the relays run."""
    try:
        for round_ in range(ROUNDS):
            now = datetime.now(UTC)
            with db.write() as conn:
                outbox.insert(
                    conn,
                    [
                        outbox.event("step.completed", task_id=task, tenant="acme", payload={"round": round_}, now=now)
                        for task in tasks
                    ],
                )
    finally:
        done.set()


def relay_until_drained(relay: OutboxRelay, writing_done: threading.Event, wait: bool, errors: list[Any]) -> None:
    try:
        while True:
            finished = writing_done.is_set()
            relay.drain(wait=wait)
            with relay.db.read() as conn:
                if finished and not outbox.has_unpublished(conn):
                    return
            threading.Event().wait(0.002)  # another relay holds the round: try again shortly
    except Exception as error:  # reported by the test, not lost in a thread
        errors.append(error)


def test_concurrent_relays_publish_each_tasks_events_once_and_in_order(kafka: Kafka, store: Database) -> None:
    topic = kafka.new_topic(partitions=3, prefix="relay-order")
    tasks = [new_id() for _ in range(TASKS)]
    buses = [KafkaBus(kafka.bootstrap_servers, topic=topic, client_id=f"relay-{n}") for n in range(RELAYS)]
    databases = [Database(store.url) for _ in range(RELAYS)]
    # Half wait for their turn (drain's default), half skip a round another relay holds (the workers' way).
    relays = [OutboxRelay(db, bus, batch_size=BATCH) for db, bus in zip(databases, buses, strict=True)]
    writing_done = threading.Event()
    errors: list[Any] = []
    threads = [
        threading.Thread(target=relay_until_drained, args=(relay, writing_done, n % 2 == 0, errors), daemon=True)
        for n, relay in enumerate(relays)
    ]
    try:
        for thread in threads:
            thread.start()
        write_rounds(store, tasks, writing_done)
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads), "a relay did not finish"
        assert not errors, errors
    finally:
        writing_done.set()
        for bus in buses:
            bus.close()
        for db in databases:
            db.dispose()

    with store.read() as conn:
        stored = list(conn.execute(sa.select(events.c.id, events.c.task_id, events.c.published_at).order_by("seq")))
    assert len(stored) == TASKS * ROUNDS
    assert all(row.published_at is not None for row in stored)

    received = [codec.decode(record.value) for record in read_to_end(kafka.bootstrap_servers, topic)]
    ids = [event.id for event in received]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicated, f"{len(duplicated)} events published more than once"
    assert sorted(ids) == sorted(row.id for row in stored)
    for task in tasks:
        written = [row.id for row in stored if row.task_id == task]
        arrived = [event.id for event in received if event.task_id == task]
        assert arrived == written, f"task {task}'s events arrived out of the order they were written"
