"""The Kafka source runtime: each message on a topic becomes a task of a named workflow, exactly once.

What a kafkaSource Connector's consumer Deployment runs (``python -m connectors.kafka.source``), and what
``aiplane dev --kafka`` runs in-process. A poll's messages go to the engine as one batch (``Engine.submit_batch``,
one transaction), and the batch's offsets are committed only after that transaction and the dead letters'
acknowledgements: a crash anywhere before the commit means the messages are read again, and their idempotency
keys (topic/partition/offset, or a CEL expression over the message) give back the tasks made the first time
instead of new ones. A message that cannot become a task goes to the dead-letter topic with the reason in its
headers; a batch that fails as a whole (store down, workflow not registered) is read again after a pause.

Policies govern these tasks as they govern the gateway's: the engine's intake masks their input and refuses a
tenant or a residency the workflow's Policies deny (dead-lettered with that reason, ``tenant-denied`` or
``residency-denied``); the workers' approval gate holds them as any task. A tenant over its rate limit is slowed
down, not refused: the messages past the limit are left on the topic (offsets not committed, partitions rewound)
and read again once the bucket refills, so the limit shows as consumer lag rather than as dead letters someone
must put back. A tenant at its quota of tasks in flight (``quota.maxTasksInFlight``) is back-pressure the same way:
the engine takes only the messages the quota leaves room for (the first ones of each partition), and the source
commits no further than those, leaves the rest on the topic and reads them again after ``retry_backoff``, until
tasks finish and make room; nothing is dead-lettered for it. While it waits,
``aiplane_connector_waiting_messages{reason="quota-exceeded"}`` counts the messages it left, and a log line says
why.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata

from connectors.kafka import clients, deadletter, metrics
from connectors.kafka.codec import header
from connectors.kafka.validation import InputInvalidError, InputSchemas
from crds.connector import KafkaSource as KafkaSourceSpec
from crds.workflow import WorkflowSpec
from engine.errors import (
    IdempotencyMismatchError,
    InvalidRequestError,
    PolicyDeniedError,
    QuotaExceededError,
    WorkflowNotFoundError,
)
from engine.executors.resolvers import SecretResolver
from engine.facade import Engine
from engine.flow import cel
from engine.runtime.bulk import Batch

log = logging.getLogger(__name__)

Validate = Callable[[str, WorkflowSpec], None]
#: The class a source's tasks are submitted in, and whose rate limit they count against.
PRIORITY = "normal"
#: The longest a rate-limited source waits before it looks again (a stop is noticed within it too).
_MAX_THROTTLE = 5.0


class Throttle(Protocol):
    """A rate limit's refusal (``policies.ratelimit.Refusal``)."""

    @property
    def retry_after(self) -> float: ...

    def describe(self) -> str: ...


class Limiter(Protocol):
    """Token buckets per tenant and priority class (``policies.ratelimit.SharedRateLimiter``)."""

    def take(self, tenant: str, priority: str | None = None) -> Throttle | None: ...


@dataclass(frozen=True, kw_only=True)
class SourceSettings:
    #: The Connector's name: the metrics' label, a dead letter's header, and the default consumer group.
    connector: str
    #: Tenant the tasks belong to.
    tenant: str
    spec: KafkaSourceSpec
    #: Most messages per poll, and so per submission batch (one transaction).
    batch_size: int = 500
    poll_timeout: float = 0.5
    #: Longest wait for the broker to acknowledge dead letters (and for metadata).
    ack_timeout: float = 10.0
    #: Pause before reading a failed batch again.
    retry_backoff: float = 1.0
    #: How long the group waits for a member that stopped heartbeating (a killed pod) before giving its partitions
    #: to the others: the longest a kill -9 delays the partitions it held. The broker bounds it (6 s to 30 min by
    #: default).
    session_timeout: float = 10.0

    @property
    def group_id(self) -> str:
        return self.spec.group_id or f"aiplane-{self.connector}"

    @property
    def dead_letter_topic(self) -> str:
        return self.spec.dead_letters_to


@dataclass
class BatchResult:
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    #: Messages left on the topic for now (a rate limit, a quota), read again after ``retry_after`` seconds.
    deferred: int = 0
    retry_after: float = 0.0
    #: Why they were left: ``rate-limited`` or ``quota-exceeded``.
    waits_on: str | None = None

    @property
    def consumed(self) -> int:
        return self.accepted + self.duplicates + self.dead_lettered


class SourceStalledError(Exception):
    """The batch cannot be taken now, through no fault of its messages; it is read again after a pause."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _MalformedError(Exception):
    pass


class KafkaSource:
    def __init__(
        self,
        engine: Engine,
        settings: SourceSettings,
        *,
        validate: Validate | None = None,
        secrets: SecretResolver | None = None,
        rate: Limiter | None = None,
    ) -> None:
        """``validate``: called with the workflow version and spec before a batch's tasks are written; raising
        refuses the batch's messages, which then go to the dead-letter topic (how policies reject input).
        ``secrets``: where the Secret keys of the spec's ``auth`` are read (a consumer pod: the files the Connector
        operator mounts, ``DirectorySecretResolver``); the consumer and the dead-letter producer both use it.
        ``rate``: the tenant's rate limits; messages past them wait on the topic (see the module's docstring).
        Raises ``clients.SecretMissingError`` naming a key that is not there."""
        self.engine = engine
        self.settings = settings
        self.validate = validate
        self.rate = rate
        self.schemas = InputSchemas()
        spec = settings.spec
        auth = clients.security_settings(spec.auth, secrets)
        self.consumer = clients.consumer(
            spec.bootstrap_servers,
            client_id=f"aiplane-source-{settings.connector}",
            group_id=settings.group_id,
            auto_offset_reset=spec.start_from,
            max_poll_records=settings.batch_size,
            session_timeout_ms=int(settings.session_timeout * 1000),
            heartbeat_interval_ms=max(int(settings.session_timeout * 1000) // 3, 100),
            **auth,
        )
        # Metadata first: a group leader that assigns before it knows the topic's partitions assigns none (and
        # kafka-python was seen not to rebalance when they became known).
        self.consumer.partitions_for_topic(spec.topic)
        self.consumer.subscribe([spec.topic])
        producer = clients.Producer(
            spec.bootstrap_servers,
            client_id=f"aiplane-source-{settings.connector}-dlq",
            ack_timeout=settings.ack_timeout,
            **auth,
        )
        self.dead_letters = deadletter.DeadLetters(
            producer, settings.dead_letter_topic, settings.connector, settings.ack_timeout
        )
        self._stopped = threading.Event()
        self._counters = {
            outcome: metrics.MESSAGES.labels(settings.connector, outcome)
            for outcome in ("accepted", "duplicate", "dead_lettered")
        }

    # ---------------------------------------------------------------- running

    def run(self) -> None:
        """Consume until ``stop``; a failed batch is logged, counted, and read again after ``retry_backoff``."""
        while not self._stopped.is_set():
            try:
                result = self.poll_once()
                if result.deferred:
                    self._stopped.wait(min(result.retry_after, _MAX_THROTTLE))
            except SourceStalledError as exc:
                log.warning("source %s stalled (%s): %s", self.settings.connector, exc.reason, exc)
                metrics.STALLS.labels(self.settings.connector, exc.reason).inc()
                self._stopped.wait(self.settings.retry_backoff)
            except Exception:
                log.exception("source %s: batch failed; reading it again", self.settings.connector)
                metrics.STALLS.labels(self.settings.connector, "error").inc()
                self._stopped.wait(self.settings.retry_backoff)

    def stop(self) -> None:
        self._stopped.set()

    def close(self) -> None:
        """Leave the group (its partitions go to the other members at once) and close the clients."""
        self.consumer.close(autocommit=False)
        self.dead_letters.producer.close()

    def __enter__(self) -> KafkaSource:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
        self.close()

    # ---------------------------------------------------------------- one batch

    def poll_once(self) -> BatchResult:
        """Read one batch, submit it, dead-letter what it refused, commit; or rewind and raise."""
        batches = self.consumer.poll(
            timeout_ms=int(self.settings.poll_timeout * 1000), max_records=self.settings.batch_size
        )
        if not batches:
            self._measure_lag()
            return BatchResult()
        started = time.perf_counter()
        records = [record for partition_records in batches.values() for record in partition_records]
        records, deferred, throttle = self._admit(records)
        try:
            result, waiting, quota = self._take(records) if records else (BatchResult(), [], None)
            self._commit([record for record in records if record not in waiting] if waiting else records)
        except BaseException:
            self.dead_letters.discard()
            self._rewind([*records, *deferred])
            # A stall (workflow missing, store or dead-letter topic down, a rebalance) is when lag builds up: the
            # gauge must show it then, not stay at what the last good poll saw. The batch's own error is the one
            # to report, so a failure to measure is only logged.
            try:
                self._measure_lag()
            except Exception:
                log.debug("source %s: lag not measured", self.settings.connector, exc_info=True)
            raise
        if waiting:  # the quota's: these and everything after them on their partitions wait
            assert quota is not None
            self._wait(result, [*waiting, *deferred], "quota-exceeded", self.settings.retry_backoff, quota.detail)
        elif deferred:
            assert throttle is not None
            self._wait(result, deferred, "rate-limited", throttle.retry_after, throttle.describe())
        for reason in ("quota-exceeded", "rate-limited"):
            metrics.WAITING.labels(self.settings.connector, reason).set(
                result.deferred if result.waits_on == reason else 0
            )
        for outcome, count in (
            ("accepted", result.accepted),
            ("duplicate", result.duplicates),
            ("dead_lettered", result.dead_lettered),
        ):
            if count:
                self._counters[outcome].inc(count)
        metrics.BATCH_DURATION.labels(self.settings.connector).observe(time.perf_counter() - started)
        self._measure_lag()
        return result

    def _wait(self, result: BatchResult, records: Sequence[Any], reason: str, retry_after: float, why: str) -> None:
        """Leave ``records`` on the topic (rewound, not committed) to be read again after ``retry_after``."""
        self._rewind(records)
        result.deferred, result.retry_after, result.waits_on = len(records), retry_after, reason
        log.info("source %s: %d message(s) wait on the topic: %s", self.settings.connector, len(records), why)
        metrics.STALLS.labels(self.settings.connector, reason).inc()

    def _admit(self, records: list[Any]) -> tuple[list[Any], list[Any], Throttle | None]:
        """(taken, deferred, why): the records the tenant's rate limits admit now, in order, and the rest. A prefix
        of each partition's records is taken, so committing the taken ones never skips a deferred one."""
        if self.rate is None:
            return records, [], None
        for index, _ in enumerate(records):
            throttle = self.rate.take(self.settings.tenant, PRIORITY)
            if throttle is not None:
                return records[:index], records[index:], throttle
        return records, [], None

    def _take(self, records: Sequence[Any]) -> tuple[BatchResult, list[Any], QuotaExceededError | None]:
        """Submit the records' tasks and dead-letter what was refused: (what happened, the records left on the
        topic for the tenant's quota, its refusal). The quota takes the first records of a partition; the ones it
        left, and whatever follows them on their partition, wait (a record after them is not dead-lettered now:
        it is read again)."""
        result = BatchResult()
        values: list[Any] = []
        keys: list[str] = []
        traces: list[str | None] = []
        submitted: list[Any] = []
        dead: list[tuple[Any, str, str]] = []
        for record in records:
            try:
                value = self._value(record)
                keys.append(self._key(record, value))
            except _MalformedError as exc:
                dead.append((record, deadletter.MALFORMED, str(exc)))
                continue
            values.append(value)
            traces.append(header(record.headers, "traceparent") if record.headers else None)
            submitted.append(record)
        batch = Batch(
            tenant=self.settings.tenant,
            workflow=self.settings.spec.workflow,
            inputs=values,
            keys=keys,
            trace_contexts=traces,
            priority=PRIORITY,
            check=self._check,
            validate=self.validate,
        )
        outcomes = self.engine.submit_batch(batch)
        quota: QuotaExceededError | None = None
        held: dict[tuple[str, int], int] = {}  # per partition, the first offset the quota left
        for record, outcome in zip(submitted, outcomes, strict=True):
            if isinstance(outcome, QuotaExceededError):
                quota = outcome
                where = (record.topic, record.partition)
                held[where] = min(held.get(where, record.offset), record.offset)
        waiting = [r for r in records if r.offset >= held.get((r.topic, r.partition), r.offset + 1)]
        if waiting:
            dead = [d for d in dead if d[0].offset < held.get((d[0].topic, d[0].partition), d[0].offset + 1)]
        for record, outcome in zip(submitted, outcomes, strict=True):
            if record.offset >= held.get((record.topic, record.partition), record.offset + 1):
                continue  # read again, whatever its outcome now (a refusal is dead-lettered then, once)
            if isinstance(outcome, Exception):
                dead.append((record, _refusal(outcome), self._masked(str(outcome))))
            elif outcome.created:
                result.accepted += 1
            else:
                result.duplicates += 1
        # In the source's order, whatever stage refused them.
        for record, reason, detail in sorted(dead, key=lambda d: (d[0].partition, d[0].offset)):
            self.dead_letters.send(record, reason, detail)
        result.dead_lettered = len(dead)
        try:
            self.dead_letters.confirm()
        except KafkaError as exc:
            raise SourceStalledError("dead-letter-unavailable", f"dead-letter topic: {exc}") from exc
        return result, waiting, quota

    def _masked(self, detail: str) -> str:
        """A refusal's text, masked as the workflow's input is: an input check may quote the input."""
        pii = self.engine.pii
        return pii.text(self.settings.tenant, self.settings.spec.workflow, detail) if pii is not None else detail

    @staticmethod
    def _value(record: Any) -> Any:
        try:
            value = json.loads(record.value) if record.value is not None else None
        except (ValueError, UnicodeDecodeError) as exc:
            raise _MalformedError(f"the message is not JSON: {exc}") from exc
        if value is None:
            raise _MalformedError("the message has no value")
        return value

    def _check(self, value: Any, version: str, spec: WorkflowSpec) -> None:
        """The workflow's inputSchema (the caller's own check, ``validate``, runs once per batch)."""
        self.schemas.check(self.settings.spec.workflow, version, spec.input_schema, value)

    def _key(self, record: Any, value: Any) -> str:
        expression = self.settings.spec.idempotency_key
        if expression is None:
            return f"{record.topic}/{record.partition}/{record.offset}"
        variables = {
            "value": value,
            "key": record.key.decode(errors="replace") if record.key is not None else None,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
        }
        try:
            key = cel.evaluate(expression, variables, where=f"connector {self.settings.connector!r} idempotencyKey")
        except Exception as exc:  # a field missing from this message: the message's fault, not the source's
            raise _MalformedError(f"idempotency key {expression!r}: {exc}") from exc
        if key is None or key == "" or isinstance(key, dict | list):
            raise _MalformedError(f"idempotency key {expression!r} gave {key!r}; it must give a string or number")
        return str(key)

    def _commit(self, records: Sequence[Any]) -> None:
        last: dict[tuple[str, int], int] = {}
        for record in records:  # in offset order per partition: the last one wins
            last[record.topic, record.partition] = record.offset
        offsets = {
            TopicPartition(topic, partition): OffsetAndMetadata(offset + 1, "", -1)
            for (topic, partition), offset in last.items()
        }
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except (CommitFailedError, RebalanceInProgressError) as exc:
            # The group is moving partitions: whoever gets them reads the batch again and finds its tasks.
            raise SourceStalledError("rebalance", f"offsets not committed: {exc}") from exc

    def _rewind(self, records: Sequence[Any]) -> None:
        """Put each partition back to the first of ``records`` on it, so the next poll reads them again."""
        first: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            first[tp] = min(first.get(tp, record.offset), record.offset)
        assigned = self.consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)

    def _measure_lag(self) -> None:
        """Set the lag gauge of each assigned partition: its high watermark less the source's position (where it
        reads next, which is the committed offset after a commit or a rewind)."""
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            if highwater is None:  # nothing fetched from it yet
                continue
            try:
                position = self.consumer.position(tp, timeout_ms=0)
            except KafkaError:
                continue
            if position is not None:
                metrics.CONSUMER_LAG.labels(self.settings.connector, tp.topic, str(tp.partition)).set(
                    max(highwater - position, 0)
                )


def _refusal(outcome: Exception) -> str:
    """The dead-letter reason for a refused input; raises when the batch must wait."""
    if isinstance(outcome, WorkflowNotFoundError):
        raise SourceStalledError("workflow-missing", str(outcome))
    if isinstance(outcome, IdempotencyMismatchError):
        return deadletter.MISMATCH
    if isinstance(outcome, PolicyDeniedError):
        return outcome.type  # tenant-denied, residency-denied: what the gateway's problem type says
    if isinstance(outcome, InvalidRequestError | InputInvalidError):
        return deadletter.INVALID
    return deadletter.REFUSED
