"""The event bus interface, its in-process implementation, and the outbox relay that feeds it.

Delivery is at least once: the relay marks events published only after the bus accepted them, so a crash in
between publishes them again; consumers deduplicate on ``Event.id``. Kafka (another issue) implements the same
``Bus`` protocol.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Protocol, runtime_checkable

from engine.clock import Clock, utcnow
from engine.models import Event
from engine.store import outbox
from engine.store.database import Database

log = logging.getLogger(__name__)

Handler = Callable[[Event], None]


class Subscription(Protocol):
    def close(self) -> None: ...


class Bus(Protocol):
    def publish(self, event: Event) -> None:
        """Accept the event for delivery, or raise; returning means the bus has taken responsibility for it."""
        ...

    def subscribe(self, handler: Handler, *, types: Collection[str] | None = None) -> Subscription:
        """Call ``handler`` for each published event (of ``types``, if given) until the subscription closes."""
        ...


@runtime_checkable
class BatchPublisher(Protocol):
    """A bus that can take a batch in one go (Kafka: send all, then wait for the acknowledgements together).

    Optional: the relay uses it when the bus has it, and ``publish`` one event at a time otherwise. Waiting for
    each event's acknowledgement before sending the next would cost a broker round trip per event.
    """

    def publish_many(self, events: Sequence[Event]) -> int:
        """Publish ``events`` in order; return how many of the leading ones the bus accepted (all, or fewer when
        one failed: that one and the rest are published again later)."""
        ...


class Deduplicator:
    """Wraps a handler so that an event id seen recently is not handled twice (delivery is at least once).

    Remembers the last ``capacity`` ids: a redelivery comes soon after the first delivery (a relay that crashed
    between publishing and marking), so a bounded memory catches it without growing forever. Meant for one
    delivery thread (a subscription's); two threads handing it the same id at once could both handle it.

    Per process: the ids live in this object's memory, so another process of the same consumer group, or this one
    after a restart, may handle a redelivered event again. A consumer that must act once across processes records
    the id with its own work (e.g. a unique key written in the same transaction).
    """

    def __init__(self, handler: Handler, capacity: int = 100_000) -> None:
        self.handler = handler
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            if event.id in self._seen:
                return
        self.handler(event)
        # Remembered only once handled: a delivery whose handler failed must not swallow the redelivery.
        with self._lock:
            self._seen[event.id] = None
            if len(self._seen) > self.capacity:
                self._seen.popitem(last=False)


class _InMemorySubscription:
    def __init__(self, bus: InMemoryBus, handler: Handler, types: frozenset[str] | None) -> None:
        self.bus = bus
        self.handler = handler
        self.types = types

    def close(self) -> None:
        self.bus._remove(self)


class InMemoryBus:
    """Delivers synchronously to the subscribers in this process, in publish order.

    A failing subscriber is logged and skipped: one consumer's bug must not stop the relay for everyone
    (with Kafka, each consumer group fails on its own, too).
    """

    def __init__(self) -> None:
        self._subscriptions: list[_InMemorySubscription] = []
        self._lock = threading.Lock()

    def publish(self, event: Event) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            if subscription.types is not None and event.type not in subscription.types:
                continue
            try:
                subscription.handler(event)
            except Exception:
                log.exception("event subscriber failed on %s %s", event.type, event.id)

    def subscribe(self, handler: Handler, *, types: Collection[str] | None = None) -> Subscription:
        subscription = _InMemorySubscription(self, handler, frozenset(types) if types is not None else None)
        with self._lock:
            self._subscriptions.append(subscription)
        return subscription

    def _remove(self, subscription: _InMemorySubscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)


class OutboxRelay:
    """Moves outbox rows to the bus, oldest first; safe to run in several processes at once.

    One relay publishes at a time, so that each task's events reach the bus in the order they were written: two
    relays publishing different batches side by side could deliver a task's later event before its earlier one
    (whichever batch the bus acknowledged first). Within a process, rounds take turns on a lock. PostgreSQL, where
    every worker runs its own relay: a round takes a transaction-scoped advisory lock (``outbox.take_relay_turn``),
    then claims, publishes and marks a batch in that one transaction; the lock is released at commit, when the
    marks are visible, so the next relay starts after them. SQLite has one writer; its write lock must not wait on
    a broker's acknowledgements (a Kafka outage would stall every writer for the ack timeout), so a batch is read,
    published outside any transaction, then marked; relays in several processes may publish a row twice there,
    which at-least-once delivery allows (consumers dedupe by id). Either way a publish failure stops the batch
    there, keeping order, and the rest waits for the next round.

    One relay at a time bounds the publish rate by one producer's; a batch (``publish_many``) keeps that at the
    broker's pace rather than one round trip per event.
    """

    def __init__(self, db: Database, bus: Bus, *, batch_size: int = 100, clock: Clock = utcnow) -> None:
        self.db = db
        self.bus = bus
        self.batch_size = batch_size
        self.clock = clock
        self._round = threading.Lock()

    def relay_once(self, *, wait: bool = True) -> int:
        """Publish one batch; how many events the bus accepted. ``wait=False``: when another relay (of this
        process, or on PostgreSQL of any) has the turn, return 0 at once instead of waiting for it."""
        if not self._round.acquire(blocking=wait):
            return 0
        try:
            return self._relay_sqlite() if self.db.is_sqlite else self._relay_postgres(wait)
        finally:
            self._round.release()

    def _relay_postgres(self, wait: bool) -> int:
        with self.db.write() as conn:
            if not outbox.take_relay_turn(conn, wait=wait):
                return 0
            events = outbox.claim_unpublished(conn, self.batch_size)
            accepted = self._publish(events)
            outbox.mark_published(conn, [event.seq for event in events[:accepted]], self.clock())
            return accepted

    def _relay_sqlite(self) -> int:
        with self.db.read() as conn:
            events = outbox.claim_unpublished(conn, self.batch_size)
        accepted = self._publish(events)
        if accepted:
            with self.db.write() as conn:
                outbox.mark_published(conn, [event.seq for event in events[:accepted]], self.clock())
        return accepted

    def _publish(self, events: list[Event]) -> int:
        """How many of ``events``, from the first, the bus accepted."""
        if not events:
            return 0
        if isinstance(self.bus, BatchPublisher):
            return self.bus.publish_many(events)
        for count, event in enumerate(events):
            try:
                self.bus.publish(event)
            except Exception:
                log.exception("bus refused event %s %s; will retry", event.type, event.id)
                return count
        return len(events)

    def drain(self, *, wait: bool = True) -> int:
        """Relay until nothing is left (or the bus refuses); returns how many were published. ``wait=False``
        (the workers' maintenance rounds): stop as soon as another relay has the turn; it publishes the rest."""
        total = 0
        while True:
            count = self.relay_once(wait=wait)
            total += count
            if count < self.batch_size:
                return total
