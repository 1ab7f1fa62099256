"""kafka-python clients with the settings every aiplane producer and consumer shares."""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from crds.base import SecretKeyRef
from crds.connector import KafkaAuth
from engine.executors.resolvers import SecretResolver

log = logging.getLogger(__name__)


class SecretMissingError(LookupError):
    """A Secret key a Connector's auth names is not there (the Connector's Degraded reason SecretMissing)."""

    def __init__(self, ref: SecretKeyRef, what: str) -> None:
        super().__init__(f"{what} needs secret {ref.name}/{ref.key}, which is not available")
        self.ref = ref


def security_settings(auth: KafkaAuth | None, secrets: SecretResolver | None) -> dict[str, Any]:
    """kafka-python settings for a Connector's ``auth``: SASL (PLAIN or SCRAM) over TLS or plaintext; none without.

    Pass them to ``producer``, ``Producer``, ``consumer`` or ``KafkaAdminClient`` as overrides. The CA comes as PEM
    text from its Secret into an ``ssl.SSLContext`` (kafka-python's ``ssl_cafile`` would need it written to a
    file); the context checks the brokers' host names, as kafka-python does by default. Raises
    ``SecretMissingError`` naming the Secret key that is not there.
    """
    if auth is None:
        return {}

    def secret(ref: SecretKeyRef, what: str) -> str:
        value = secrets.secret(ref.name, ref.key) if secrets is not None else None
        if value is None:
            raise SecretMissingError(ref, what)
        return value

    settings: dict[str, Any] = {
        "security_protocol": "SASL_SSL" if auth.tls else "SASL_PLAINTEXT",
        "sasl_mechanism": auth.mechanism,
        "sasl_plain_username": secret(auth.username, "auth.username"),
        "sasl_plain_password": secret(auth.password, "auth.password"),
    }
    if auth.tls:
        cadata = secret(auth.ca, "auth.ca") if auth.ca is not None else None
        try:
            settings["ssl_context"] = ssl.create_default_context(cadata=cadata)
        except ssl.SSLError as exc:
            raise ValueError(f"auth.ca ({auth.ca.name if auth.ca else ''}) is not PEM certificates: {exc}") from exc
    return settings


def producer(bootstrap_servers: str, *, client_id: str, ack_timeout: float, **overrides: Any) -> KafkaProducer:
    """An idempotent producer that waits for every in-sync replica (acks=all); see ``producer_config``."""
    return KafkaProducer(
        **producer_config(bootstrap_servers, client_id=client_id, ack_timeout=ack_timeout, **overrides)
    )


#: What every aiplane producer must keep whatever the overrides: the outbox marks an event sent on the strength of
#: these (an acknowledgement from every in-sync replica, no duplicate or reordering from the client's retries).
DELIVERY_GUARANTEES: dict[str, Any] = {
    "enable_idempotence": True,
    "acks": "all",
    "max_in_flight_requests_per_connection": 5,
}


def producer_config(bootstrap_servers: str, *, client_id: str, ack_timeout: float, **overrides: Any) -> dict[str, Any]:
    """The settings of ``producer``: idempotent, acks=all, at most 5 requests in flight.

    Idempotence lets the client retry a send whose acknowledgement was lost without writing the record twice, and
    keeps a partition's records in send order across those retries; kafka-python allows it only with at most 5
    requests in flight per connection, which also bounds how much is outstanding. ``ack_timeout`` (seconds) bounds
    both the wait for metadata and the delivery of a record, so a caller is never blocked longer than that.
    ``overrides`` (auth, timeouts) may not name the ``DELIVERY_GUARANTEES``: that raises ``ValueError``.
    """
    pinned = sorted(DELIVERY_GUARANTEES.keys() & overrides.keys())
    if pinned:
        raise ValueError(f"a producer's delivery guarantees are not overridable: {', '.join(pinned)}")
    timeout_ms = int(ack_timeout * 1000)
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "client_id": client_id,
        **DELIVERY_GUARANTEES,
        "max_block_ms": timeout_ms,
        # The request timeout must stay below the delivery timeout (the client checks it).
        "request_timeout_ms": max(timeout_ms // 2, 1000),
        "delivery_timeout_ms": max(timeout_ms, 2000),
        "reconnect_backoff_max_ms": 1000,
    }
    if "bootstrap_timeout_ms" in KafkaProducer.DEFAULT_CONFIG:  # kafka-python 3; 2.x bootstraps lazily
        config["bootstrap_timeout_ms"] = timeout_ms
    config.update(overrides)
    return config


class Producer:
    """A producer that is replaced after a failed delivery.

    kafka-python (3.0.12 measured) keeps an idempotent producer stuck once a record has expired undelivered (a broker
    unreachable for longer than the delivery timeout): every later send times out too, after the broker is back.
    The Java client bumps the producer epoch there; here the producer is closed and the next send makes a new one
    (a new producer id), which fails fast while the broker is still away. Records the old one may still deliver
    are duplicates that consumers drop by their ids.
    """

    def __init__(self, bootstrap_servers: str, *, client_id: str, ack_timeout: float, **overrides: Any) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.ack_timeout = ack_timeout
        self._settings: dict[str, Any] = {"client_id": client_id, "ack_timeout": ack_timeout, **overrides}
        self._lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        try:
            self._producer = producer(bootstrap_servers, **self._settings)
        except KafkaError as error:
            # A broker still starting (pods come up in any order) is not a reason to refuse to start: sends fail
            # and their callers retry (the relay leaves events in the outbox), and the first one that finds the
            # broker makes the producer.
            log.warning("no Kafka broker at %s yet (%s); will connect on the first send", bootstrap_servers, error)

    def _current(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                self._producer = producer(self.bootstrap_servers, **self._settings)
            return self._producer

    def send(self, topic: str, *, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> Any:
        return self._current().send(topic, key=key, value=value, headers=headers)

    def flush(self) -> None:
        self._current().flush(timeout=self.ack_timeout)

    def reset(self) -> None:
        """Close the current producer without waiting; the next send starts a new one."""
        with self._lock:
            old, self._producer = self._producer, None
        if old is not None:
            _close(old, 0)

    def close(self) -> None:
        with self._lock:
            current, self._producer = self._producer, None
        if current is not None:
            _close(current, self.ack_timeout)


def _close(kafka_producer: KafkaProducer, timeout: float) -> None:
    """Close, giving up on records not delivered within ``timeout``.

    kafka-python's ``close`` flushes first and raises when a record is still pending, leaving the producer open (its
    ``__del__`` then raises again at garbage collection); the sender is force-closed here instead, which fails the
    pending records' futures, and the producer marked closed.
    """
    try:
        kafka_producer.close(timeout=timeout)
    except KafkaError:
        kafka_producer._sender.force_close()
        kafka_producer._closed = True


def consumer(bootstrap_servers: str, *, client_id: str, **overrides: Any) -> KafkaConsumer:
    """A consumer that commits only when told to: aiplane commits after the work a record caused is durable."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "client_id": client_id,
        "enable_auto_commit": False,
        "reconnect_backoff_max_ms": 1000,
    }
    config.update(overrides)
    return KafkaConsumer(**config)


def ensure_topics(bootstrap_servers: str, topics: list[str], *, partitions: int = 3, replication: int = 1) -> None:
    """Create the topics that do not exist yet (a topic that exists is left as it is)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="aiplane-admin")
    try:
        missing = [name for name in topics if name not in set(admin.list_topics())]
        for name in missing:
            # Another process may create it in between: that is as good.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name=name, num_partitions=partitions, replication_factor=replication)])
    finally:
        admin.close()
