"""Asks a Kafka broker how many partitions a topic has: the cap on a source's consumers, and the check that the
broker is reachable and the topic exists. Blocking (kafka-python); the reconciler runs it in a thread."""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

UNKNOWN_TOPIC = 3  # Kafka's UNKNOWN_TOPIC_OR_PARTITION error code


@dataclass(frozen=True)
class Probe:
    """What the broker said: ``partitions`` when the topic exists; ``error`` (a sentence) when unreachable;
    ``dead_letters_missing``: the dead-letter topic asked about, when the broker does not have it."""

    partitions: int | None = None
    error: str | None = None
    dead_letters_missing: str | None = None

    @property
    def reachable(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Credentials:
    """SASL credentials read from the Connector's Secret refs; ``ca``: PEM certificates (with ``tls``)."""

    mechanism: str
    username: str
    password: str
    tls: bool
    ca: str | None = None


def partitions(
    bootstrap_servers: str,
    topic: str,
    *,
    dead_letter_topic: str | None = None,
    credentials: Credentials | None = None,
    timeout_s: float = 5.0,
) -> Probe:
    """How many partitions ``topic`` has, and whether ``dead_letter_topic`` (a source's) exists, in one request."""
    timeout_ms = int(timeout_s * 1000)
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "client_id": "aiplane-operator",
        "request_timeout_ms": timeout_ms,
        "bootstrap_timeout_ms": timeout_ms,
        "reconnect_backoff_max_ms": 1000,
    }
    # As the consumers connect (connectors.kafka.clients.security_settings), so the probe sees what they will.
    if credentials is not None:
        config.update(
            security_protocol="SASL_SSL" if credentials.tls else "SASL_PLAINTEXT",
            sasl_mechanism=credentials.mechanism,
            sasl_plain_username=credentials.username,
            sasl_plain_password=credentials.password,
        )
    try:
        if credentials is not None and credentials.tls:
            config["ssl_context"] = ssl.create_default_context(cadata=credentials.ca)
        admin = KafkaAdminClient(**config)
    except (KafkaError, OSError, ValueError) as error:  # ssl.SSLError is an OSError: a CA that is not PEM
        return Probe(error=f"cannot reach a broker at {bootstrap_servers}: {_describe(error)}")
    asked = [topic] if dead_letter_topic is None or dead_letter_topic == topic else [topic, dead_letter_topic]
    try:
        described = admin.describe_topics(asked)
    except (KafkaError, OSError) as error:
        return Probe(error=f"broker {bootstrap_servers} did not describe topic {topic!r}: {_describe(error)}")
    finally:
        with contextlib.suppress(Exception):
            admin.close()
    codes = {entry.get("name", entry.get("topic")): int(entry.get("error_code", 0)) for entry in described}
    count = {entry.get("name", entry.get("topic")): len(entry.get("partitions") or []) for entry in described}
    code = codes.get(topic, UNKNOWN_TOPIC)
    if code == UNKNOWN_TOPIC:
        return Probe(partitions=None)
    if code != 0:
        return Probe(error=f"broker {bootstrap_servers} answered error code {code} for topic {topic!r}")
    # Another error for the dead-letter topic (not authorised to describe it) says nothing about whether it is there.
    missing = dead_letter_topic if len(asked) > 1 and codes.get(dead_letter_topic) == UNKNOWN_TOPIC else None
    return Probe(partitions=count[topic], dead_letters_missing=missing)


def _describe(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
