"""``KafkaBus``: the engine's event bus on a Kafka topic (``engine.bus.Bus``), for when tasks' events must reach
other processes and survive them.

Publishing waits for the broker's acknowledgement, so the outbox relay marks a row published only once Kafka has
it; a crash in between publishes it again (at least once; consumers deduplicate on ``Event.id``, e.g. with
``engine.bus.Deduplicator``). ``publish_many`` sends a whole relay batch before waiting, paying one round of
acknowledgements instead of one per event.

A durable (group) subscription never commits past an event its handler failed on: it seeks back to that event and
calls the handler with it again after a backoff that doubles up to ``retry_backoff_max``, for as long as it fails,
as Temporal retries an activity under its default retry policy (unlimited attempts, exponential backoff) and as
Spring Kafka's error handler seeks back. Skipping it would lose the event for the group for good; stopping would
turn a passing fault (a database restarting) into an outage someone must clear by hand. A handler that keeps
failing shows as a subscription that stays on that event (its group's lag grows) with an error logged per attempt.
Records that are not events at all (undecodable) are logged and skipped: no retry could handle them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from connectors.kafka import clients, codec
from engine.bus import Handler
from engine.models import Event

DEFAULT_EVENTS_TOPIC = "aiplane.events"
# How long a subscriber's poll blocks; also the longest ``close`` waits for the poll to notice.
_POLL_MS = 100
# A group subscriber waits without polling while it backs off; the group drops a member that does not poll within
# max.poll.interval.ms (5 min by default), so the backoff stays well below it.
_MAX_RETRY_BACKOFF = 60.0

log = logging.getLogger(__name__)


class KafkaBus:
    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: str = DEFAULT_EVENTS_TOPIC,
        client_id: str = "aiplane-bus",
        ack_timeout: float = 10.0,
        retry_backoff: float = 1.0,
        retry_backoff_max: float = 30.0,
        **producer_overrides: Any,
    ) -> None:
        """``ack_timeout``: seconds a publish waits for the broker before it fails (and the relay retries later).

        Keep it short: on PostgreSQL the relay waits inside its claim transaction (``engine.bus.OutboxRelay``).
        ``retry_backoff``, ``retry_backoff_max``: a group subscription's first and longest wait (seconds) before it
        hands an event its handler failed on to the handler again (see the module's docstring).
        """
        if not 0 < retry_backoff <= retry_backoff_max <= _MAX_RETRY_BACKOFF:
            raise ValueError(
                f"need 0 < retry_backoff ({retry_backoff}) <= retry_backoff_max ({retry_backoff_max})"
                f" <= {_MAX_RETRY_BACKOFF}"
            )
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.client_id = client_id
        self.ack_timeout = ack_timeout
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self._producer = clients.Producer(
            bootstrap_servers, client_id=client_id, ack_timeout=ack_timeout, **producer_overrides
        )
        self._subscriptions: list[KafkaSubscription] = []
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- publishing

    def publish(self, event: Event) -> None:
        if self.publish_many([event]) != 1:
            raise KafkaError(f"Kafka did not acknowledge event {event.id} within {self.ack_timeout}s")

    def publish_many(self, events: Sequence[Event]) -> int:
        futures = []
        try:
            for event in events:
                key, value, headers = codec.encode(event)
                futures.append(self._producer.send(self.topic, key=key, value=value, headers=headers))
            self._producer.flush()
        except KafkaError:
            # A send that could not even be queued (no metadata in time) or a flush that timed out: what was
            # acknowledged so far still counts, below.
            log.warning("Kafka did not take the whole batch of %d events", len(events), exc_info=True)
        accepted = 0
        for future in futures:
            if not (future.is_done and future.succeeded()):
                break
            accepted += 1
        if accepted < len(events):
            failed = futures[accepted] if accepted < len(futures) else None
            log.warning(
                "Kafka took %d of %d events (%s); starting a new producer",
                accepted,
                len(events),
                failed.exception if failed is not None and failed.is_done else "timed out",
            )
            self._producer.reset()
        return accepted

    # ---------------------------------------------------------------- subscribing

    def subscribe(
        self, handler: Handler, *, types: Collection[str] | None = None, group: str | None = None
    ) -> KafkaSubscription:
        """Call ``handler`` for each event (of ``types``, if given) on a thread of its own.

        Without ``group``, as the in-process bus does: every event published after this returns, and nothing
        before. With ``group`` (a consumer group id), a durable consumer: it starts where the group's last
        committed offset is (the topic's beginning for a new group), commits after handling each poll's events,
        and shares the partitions with the group's other members.
        """
        subscription = KafkaSubscription(self, handler, frozenset(types) if types is not None else None, group)
        with self._lock:
            self._subscriptions.append(subscription)
        subscription.start()
        return subscription

    def close(self) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.close()
        self._producer.close()

    def _forget(self, subscription: KafkaSubscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)


class KafkaSubscription:
    """One consumer and its thread. A failing handler: retried on a group subscription, else logged and skipped."""

    def __init__(self, bus: KafkaBus, handler: Handler, types: frozenset[str] | None, group: str | None) -> None:
        self.bus = bus
        self.handler = handler
        self.types = types
        self.group = group
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kafka-bus-{bus.topic}", daemon=True)
        self._consumer: KafkaConsumer = clients.consumer(
            bus.bootstrap_servers,
            client_id=f"{bus.client_id}-subscriber",
            group_id=group,
            auto_offset_reset="earliest" if group is not None else "latest",
            fetch_max_wait_ms=_POLL_MS,
        )

    def start(self) -> None:
        if self.group is not None:
            self._consumer.subscribe([self.bus.topic])
        else:
            partitions = self._consumer.partitions_for_topic(self.bus.topic)
            if not partitions:
                raise KafkaError(f"topic {self.bus.topic!r} does not exist")
            assigned = [TopicPartition(self.bus.topic, p) for p in sorted(partitions)]
            self._consumer.assign(assigned)
            # Fix the starting offsets now: an event published once subscribe() returned must be seen, which a
            # lazily resolved "latest" (at the first poll) could skip.
            for partition in assigned:
                self._consumer.position(partition)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(timeout=30)
        self.bus._forget(self)

    def _run(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                batches = self._consumer.poll(timeout_ms=_POLL_MS)
                failed = self._deliver_all(batches)
                if batches and self.group is not None:
                    try:
                        # The positions: past every handled record, and at the failed one (rewound) if any.
                        self._consumer.commit()
                    except KafkaError:
                        # A rebalance took the partitions meanwhile: their new owner gets these events again.
                        log.warning(
                            "commit on %s failed; events will be delivered again", self.bus.topic, exc_info=True
                        )
                if failed is None:
                    failures = 0
                    continue
                failures += 1
                delay = min(self.bus.retry_backoff * 2 ** (failures - 1), self.bus.retry_backoff_max)
                log.warning(
                    "event subscriber of group %s failed on %s (attempt %d); handing it over again in %.1fs",
                    self.group, failed, failures, delay,
                )  # fmt: skip
                self._stop.wait(delay)
        except Exception:
            log.exception("event subscription on %s stopped", self.bus.topic)
        finally:
            self._consumer.close(autocommit=False)

    def _deliver_all(self, batches: dict[TopicPartition, list[Any]]) -> str | None:
        """Hand a poll's records to the handler; None, or (group subscriptions) the record a handler failed on.

        On a failure every partition is put back to its first record not handled (the failed one on its own), so
        the commit that follows stops there and the next poll starts there.
        """
        pending = list(batches.items())
        for index, (partition, records) in enumerate(pending):
            for record in records:
                if self._deliver(record.value, record.headers) or self.group is None:
                    continue
                self._consumer.seek(partition, record.offset)
                for later, later_records in pending[index + 1 :]:
                    self._consumer.seek(later, later_records[0].offset)
                return f"{partition.topic}/{partition.partition}@{record.offset}"
        return None

    def _deliver(self, value: bytes, headers: list[tuple[str, bytes]]) -> bool:
        """Whether the record is done with: handled, filtered out, or not an event; False when the handler failed."""
        if self.types is not None and codec.header(headers, codec.HEADER_EVENT_TYPE) not in self.types:
            return True
        try:
            event = codec.decode(value)
        except (ValueError, KeyError, TypeError):
            log.exception("undecodable record on the event topic %s; skipped", self.bus.topic)
            return True
        try:
            self.handler(event)
        except Exception:
            log.exception("event subscriber failed on %s %s", event.type, event.id)
            return False
        return True
