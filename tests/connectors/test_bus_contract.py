"""The bus contract: what the engine and every consumer may rely on, whichever bus carries the events.

One suite, run against the in-process bus and against ``KafkaBus`` on the real broker (a topic per test):
delivery of what is published after subscribing, per-task order, filtering by type, at least once across a relay
that crashed between publishing and marking (nothing lost), and deduplication by event id on the consumer side.
The relay's tests run on both stores (``db_url``): SQLite publishes outside its write transaction, PostgreSQL
inside its claim transaction. Delivery may be asynchronous (Kafka), so every expectation is polled.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.kafka import KafkaBus
from engine import Engine, Event, TaskState, WorkerConfig
from engine.bus import BatchPublisher, Bus, Deduplicator, InMemoryBus, OutboxRelay
from engine.clock import new_id
from tests.connectors.conftest import RULES_WORKFLOW, EngineFactory
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.integration)])
def bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    if request.param == "memory":
        yield InMemoryBus()
        return
    kafka: Kafka = request.getfixturevalue("kafka")
    kafka_bus = KafkaBus(kafka.bootstrap_servers, topic=kafka.new_topic(partitions=3, prefix="events"))
    yield kafka_bus
    kafka_bus.close()


class Collector:
    """A thread-safe list of what a handler received."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def ids(self) -> list[str]:
        return [e.id for e in self.events]


def make_event(seq: int, task_id: str | None, type: str = "step.completed", **payload: Any) -> Event:
    return Event(
        id=new_id(),
        seq=seq,
        task_id=task_id,
        tenant="acme",
        type=type,
        payload=payload,
        created_at=datetime(2026, 11, 25, 12, 0, seq % 60, tzinfo=UTC),
        published_at=None,
    )


def publish_all(bus: Bus, events: Sequence[Event]) -> None:
    for event in events:
        bus.publish(event)


def wait_for(collector: Collector, count: int) -> list[Event]:
    def enough() -> list[Event]:
        events = collector.events
        assert len(events) >= count, f"{len(events)} of {count} events delivered"
        return events

    return assert_eventually(enough, timeout=30, interval=0.05)


# ---------------------------------------------------------------- delivery


def test_delivers_each_published_event_intact_to_every_subscriber(bus: Bus) -> None:
    first, second = Collector(), Collector()
    bus.subscribe(first)
    bus.subscribe(second)
    events = [make_event(i, f"task-{i % 2}", claim=f"C-{i}", nested={"amount": i * 1.5}) for i in range(1, 6)]
    events.append(make_event(6, None, type="sla.breached"))  # an event of no task
    publish_all(bus, events)
    for collector in (first, second):
        received = wait_for(collector, len(events))
        assert sorted(received, key=lambda e: e.seq) == events


def test_a_closed_subscription_receives_nothing_more(bus: Bus) -> None:
    closed, open_ = Collector(), Collector()
    subscription = bus.subscribe(closed)
    bus.subscribe(open_)
    bus.publish(make_event(1, "t"))
    wait_for(closed, 1)
    subscription.close()
    later = [make_event(2, "t"), make_event(3, "t")]
    publish_all(bus, later)
    wait_for(open_, 3)
    assert closed.ids() == [open_.ids()[0]]


def test_one_tasks_events_arrive_in_publish_order(bus: Bus) -> None:
    collector = Collector()
    bus.subscribe(collector)
    tasks = [f"task-{n}" for n in range(8)]
    # Interleaved across tasks, as workers write them; each task's events carry increasing seqs.
    events = [make_event(round_ * len(tasks) + n + 1, task) for round_ in range(10) for n, task in enumerate(tasks)]
    publish_all(bus, events)
    received = wait_for(collector, len(events))
    assert {e.id for e in received} == {e.id for e in events}
    for task in tasks:
        seqs = [e.seq for e in received if e.task_id == task]
        assert seqs == sorted(seqs), f"{task}'s events out of order: {seqs}"


def test_a_subscription_with_types_gets_only_those_types(bus: Bus) -> None:
    completions, everything = Collector(), Collector()
    bus.subscribe(completions, types={"task.completed", "task.failed"})
    bus.subscribe(everything)
    # One task, so one partition on Kafka: the filtered subscriber has passed every earlier event once it has
    # the last one.
    events = [
        make_event(1, "t", "task.submitted"),
        make_event(2, "t", "task.completed"),
        make_event(3, "t", "step.started"),
        make_event(4, "t", "task.failed"),
    ]
    publish_all(bus, events)
    wait_for(everything, 4)
    assert [e.type for e in wait_for(completions, 2)] == ["task.completed", "task.failed"]
    bus.publish(make_event(5, "t", "task.submitted"))
    bus.publish(make_event(6, "t", "task.completed"))
    assert [e.seq for e in wait_for(completions, 3)] == [2, 4, 6]


def test_the_same_event_twice_is_delivered_twice_and_handled_once_with_a_deduplicator(bus: Bus) -> None:
    raw, handled = Collector(), Collector()
    bus.subscribe(raw)
    bus.subscribe(Deduplicator(handled))
    event, other = make_event(1, "t"), make_event(2, "t")
    publish_all(bus, [event, event, other, event])
    assert [e.id for e in wait_for(raw, 4)] == [event.id, event.id, other.id, event.id]
    assert_eventually(lambda: handled.ids() == [event.id, other.id], timeout=30, interval=0.05)


def test_a_deduplicator_handles_again_an_event_whose_handler_failed() -> None:
    calls: list[str] = []

    def flaky(event: Event) -> None:
        calls.append(event.id)
        if len(calls) == 1:
            raise RuntimeError("consumer down")

    dedupe = Deduplicator(flaky, capacity=2)
    event = make_event(1, "t")
    with pytest.raises(RuntimeError):
        dedupe(event)
    dedupe(event)
    dedupe(event)
    assert calls == [event.id, event.id]
    # Bounded memory: the oldest ids are forgotten first.
    for seq in (2, 3):
        dedupe(make_event(seq, "t"))
    dedupe(event)
    assert calls[-1] == event.id
    assert len(calls) == 5


# ---------------------------------------------------------------- with the outbox relay


class RelayCrash(BaseException):
    """The relay's process dies: not an ``Exception``, so the relay does not catch it and its transaction rolls
    back with nothing marked published, as after a kill between publishing and committing."""


class CrashAfter:
    """Passes ``limit`` events to the real bus, then dies before the relay can mark them."""

    def __init__(self, bus: Bus, limit: int) -> None:
        self.bus = bus
        self.limit = limit

    def publish(self, event: Event) -> None:
        if self.limit == 0:
            raise RelayCrash
        self.bus.publish(event)
        self.limit -= 1

    def subscribe(self, handler: Callable[[Event], None], *, types: Any = None) -> Any:
        return self.bus.subscribe(handler, types=types)


class BatchCrashAfter(CrashAfter):
    def publish_many(self, events: Sequence[Event]) -> int:
        assert isinstance(self.bus, BatchPublisher)
        self.bus.publish_many(events[: self.limit])
        raise RelayCrash


class Refusing(InMemoryBus):
    """The engine's own bus in these tests: it refuses everything, so only the relay under test moves events."""

    def publish(self, event: Event) -> None:
        raise ConnectionError("not this bus")


def succeeded(engine: Engine, task_id: str) -> bool:
    return engine.get("acme", task_id).state == TaskState.SUCCEEDED


def test_events_relayed_again_after_a_relay_crash_are_all_delivered_and_deduplicated(
    bus: Bus, db_url: str, make_engine: EngineFactory
) -> None:
    engine = make_engine(db_url, bus=Refusing())
    engine.register_workflow("wf", RULES_WORKFLOW)
    tasks = [engine.submit("acme", "wf", {"amount": n * 400.0}) for n in range(6)]
    with engine.worker(WorkerConfig(poll_interval=0.02, maintenance_interval=0.05)):
        for task in tasks:
            assert_eventually(functools.partial(succeeded, engine, task.id), timeout=30)
    stored = [event for task in tasks for event in engine.events(task.id)]
    assert len(stored) == 6 * 4
    assert all(e.published_at is None for e in stored)

    raw, handled = Collector(), Collector()
    bus.subscribe(raw)
    bus.subscribe(Deduplicator(handled))
    crashing = BatchCrashAfter(bus, 10) if isinstance(bus, BatchPublisher) else CrashAfter(bus, 10)
    with pytest.raises(RelayCrash):
        OutboxRelay(engine.db, crashing, batch_size=100).relay_once()
    assert all(e.published_at is None for task in tasks for e in engine.events(task.id))

    # The restarted relay publishes everything, the ten already delivered included.
    assert OutboxRelay(engine.db, bus, batch_size=7).drain() == len(stored)
    assert all(e.published_at is not None for task in tasks for e in engine.events(task.id))
    wait_for(raw, len(stored) + 10)
    assert_eventually(lambda: len(handled.events) == len(stored), timeout=30, interval=0.05)
    assert sorted(handled.ids()) == sorted(e.id for e in stored)
    assert len(raw.ids()) == len(stored) + 10  # the duplicates did arrive; the deduplicator removed them
    for task in tasks:
        assert [e.seq for e in handled.events if e.task_id == task.id] == [
            e.seq for e in stored if e.task_id == task.id
        ]


def test_a_bus_that_refuses_leaves_the_events_for_the_next_round(
    bus: Bus, db_url: str, make_engine: EngineFactory
) -> None:
    engine = make_engine(db_url, bus=Refusing())
    engine.register_workflow("wf", RULES_WORKFLOW)
    task = engine.submit("acme", "wf", {"amount": 1.0})
    assert engine.relay.drain() == 0
    handled = Collector()
    bus.subscribe(handled)
    assert OutboxRelay(engine.db, bus).drain() == 1
    assert [e.type for e in wait_for(handled, 1)] == ["task.submitted"]
    assert [e.published_at is not None for e in engine.events(task.id)] == [True]
