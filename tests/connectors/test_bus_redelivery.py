"""A durable (group) subscription on the Kafka bus never loses an event its handler failed on: the event is handed
over again after a backoff, and the group's committed offset stays at it until the handler succeeds, so a member
that stops meanwhile leaves it to whoever reads the group next. On the real broker, one-partition topics so the
group's committed offset is the offset of the next event it will read."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from connectors.kafka import KafkaBus
from engine import Event
from engine.clock import new_id
from tests.connectors.kafkaio import committed
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def bus(kafka: Kafka) -> Iterator[KafkaBus]:
    topic = kafka.new_topic(partitions=1, prefix="events-redelivery")
    kafka_bus = KafkaBus(kafka.bootstrap_servers, topic=topic, retry_backoff=0.2, retry_backoff_max=1.0)
    yield kafka_bus
    kafka_bus.close()


def published(bus: KafkaBus, count: int) -> list[Event]:
    events = [
        Event(
            id=new_id(),
            seq=seq,
            task_id="task-1",
            tenant="acme",
            type="step.completed",
            payload={"n": seq},
            created_at=datetime(2026, 11, 26, 6, 0, seq, tzinfo=UTC),
            published_at=None,
        )
        for seq in range(count)
    ]
    assert bus.publish_many(events) == count
    return events


class Handler:
    """Records every delivery (one subscription thread calls it); raises on ``failing`` while ``fail`` is set."""

    def __init__(self, bus: KafkaBus, group: str, failing: Event, failures: int) -> None:
        self.bus, self.group, self.failing = bus, group, failing
        self.failures_left = failures
        self.delivered: list[str] = []
        #: The group's committed offset each time the failing event came back.
        self.committed_on_redelivery: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.delivered.append(event.id)
            if event.id != self.failing.id:
                return
            if len(self.delivered) > len(set(self.delivered)):
                self.committed_on_redelivery.append(committed(self.bus.bootstrap_servers, self.group, self.bus.topic))
            if self.failures_left:
                self.failures_left -= 1
                raise RuntimeError("the downstream store is down")

    def count(self, event: Event) -> int:
        with self._lock:
            return self.delivered.count(event.id)


def test_an_event_whose_handler_failed_is_handed_over_again_and_the_group_commits_no_further(bus: KafkaBus) -> None:
    events = published(bus, 10)
    x = events[4]  # offset 4 of the topic's one partition
    group = f"redelivery-{uuid.uuid4().hex[:8]}"
    handler = Handler(bus, group, x, failures=1)
    bus.subscribe(handler, group=group)
    assert_eventually(lambda: committed(bus.bootstrap_servers, group, bus.topic) == 10, timeout=60, interval=0.2)
    ids = [e.id for e in events]
    # X twice (failed, then handled), in order, nothing skipped, nothing else twice.
    assert handler.delivered == ids[:5] + ids[4:]
    # When X came back the group had committed the four events before it, and not X.
    assert handler.committed_on_redelivery == [4]


def test_a_member_stopped_while_its_handler_fails_leaves_the_event_to_the_groups_next_reader(bus: KafkaBus) -> None:
    events = published(bus, 6)
    x = events[2]
    group = f"redelivery-{uuid.uuid4().hex[:8]}"
    failing = Handler(bus, group, x, failures=1_000)
    subscription = bus.subscribe(failing, group=group)
    assert_eventually(lambda: failing.count(x) >= 3, timeout=60, interval=0.1)  # retried, with a backoff
    subscription.close()
    assert set(failing.committed_on_redelivery) == {2}
    assert committed(bus.bootstrap_servers, group, bus.topic) == 2

    healthy = Handler(bus, group, x, failures=0)
    bus.subscribe(healthy, group=group)
    assert_eventually(lambda: committed(bus.bootstrap_servers, group, bus.topic) == 6, timeout=60, interval=0.2)
    assert healthy.delivered == [e.id for e in events[2:]]
