"""Retention on Kafka: the topics aiplane writes to keep their records as long as the Policies allow, not as long
as the broker's default (a week, or forever with compaction).

``set_topic_retention`` sets ``retention.ms`` per topic with the admin client's incremental alter (kafka-python
uses IncrementalAlterConfigs where the broker has it, so the topic's other settings stay as they are). The purge
calls it with the events topic and the shortest ``retention.events`` of all Policies (one topic carries every
workflow's events), and with each kafkaSink Connector's topic and the shortest ``retention.results`` of the
workflows that publish to it (``aiplane.kafka_retention``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import KafkaError


class TopicRetentionError(RuntimeError):
    """The broker refused to set a topic's retention (the message says which topic and why)."""


def retention_ms(period: timedelta) -> int:
    return max(1, int(period.total_seconds() * 1000))


def set_topic_retention(
    bootstrap_servers: str, topics: Mapping[str, timedelta], *, skip_missing: bool = False, **client: Any
) -> dict[str, int]:
    """Set ``retention.ms`` of each topic; returns what was set. ``skip_missing``: leave out topics the cluster
    does not have (yet: a sink's topic appears with its first record), rather than fail. ``client``: more
    KafkaAdminClient settings (SASL, TLS). Raises TopicRetentionError naming every topic the broker refused."""
    if not topics:
        return {}
    wanted = {topic: retention_ms(period) for topic, period in sorted(topics.items())}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="aiplane-retention", **client)
    try:
        if skip_missing:
            existing = set(admin.list_topics())
            wanted = {topic: ms for topic, ms in wanted.items() if topic in existing}
            if not wanted:
                return {}
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": str(ms)})
            for topic, ms in wanted.items()
        ]
        try:
            answer = admin.alter_configs(resources)
        except (ValueError, KafkaError) as error:  # an unknown topic fails the whole request
            raise TopicRetentionError(f"cannot set retention.ms of {', '.join(wanted)}: {error}") from None
    finally:
        admin.close()
    failures = _failures(answer)
    if failures:
        raise TopicRetentionError("; ".join(failures))
    return wanted


def _failures(answer: Any) -> list[str]:
    """The refusals in an alter_configs answer ({type: {name: error or result}}), as messages."""
    found: list[str] = []
    if not isinstance(answer, Mapping):
        return found
    for by_name in answer.values():
        if not isinstance(by_name, Mapping):
            continue
        for name, outcome in by_name.items():
            if isinstance(outcome, BaseException):
                found.append(f"topic {name}: {outcome}")
            elif isinstance(outcome, tuple) and outcome and outcome[0]:
                found.append(f"topic {name}: error {outcome[0]} {outcome[1:] if len(outcome) > 1 else ''}".strip())
    return found


def topic_retention(bootstrap_servers: str, topic: str, **client: Any) -> int | None:
    """The topic's ``retention.ms`` as the broker reports it (None if absent)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="aiplane-retention", **client)
    try:
        answer = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=["retention.ms"])])
    finally:
        admin.close()
    return _retention_in(answer, topic)


def _retention_in(answer: Any, topic: str) -> int | None:
    """``retention.ms`` from a describe_configs answer ({type: {name: {key: {"value": ...}}}})."""
    for by_name in answer.values() if isinstance(answer, Mapping) else ():
        entry = (by_name.get(topic) or {}).get("retention.ms") if isinstance(by_name, Mapping) else None
        if isinstance(entry, Mapping) and entry.get("value") is not None:
            return int(entry["value"])
    return None
