"""kafka-python clients with the settings every aiplane producer and consumer shares."""

from __future__ import annotations

import contextlib
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError


def producer(bootstrap_servers: str, *, client_id: str, ack_timeout: float, **overrides: Any) -> KafkaProducer:
    """An idempotent producer that waits for every in-sync replica (acks=all).

    Idempotence lets the client retry a send whose acknowledgement was lost without writing the record twice, and
    keeps a partition's records in send order across those retries; kafka-python allows it only with at most 5
    requests in flight per connection, which also bounds how much is outstanding. ``ack_timeout`` (seconds) bounds
    both the wait for metadata and the delivery of a record, so a caller is never blocked longer than that.
    """
    timeout_ms = int(ack_timeout * 1000)
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "client_id": client_id,
        "enable_idempotence": True,
        "acks": "all",
        "max_in_flight_requests_per_connection": 5,
        "max_block_ms": timeout_ms,
        # The request timeout must stay below the delivery timeout (the client checks it).
        "request_timeout_ms": max(timeout_ms // 2, 1000),
        "delivery_timeout_ms": max(timeout_ms, 2000),
        "reconnect_backoff_max_ms": 1000,
    }
    config.update(overrides)
    return KafkaProducer(**config)


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
