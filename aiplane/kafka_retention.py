"""Kafka topic retention after each purge: the topics aiplane writes to keep records as long as the Policies say.

``KafkaRetention`` is the ``after`` hook of the engine's ``Retention`` (the in-cluster workers' periodic purge) and
what ``aiplane purge --kafka`` runs once. On each call it sets ``retention.ms`` of

- the engine's events topic, on the events bus's cluster: the shortest ``retention.events`` of all Policies (every
  workflow's events share the topic);
- each kafkaSink Connector's topic, on the Connector's own cluster with its own credentials: the shortest
  ``retention.results`` of the workflows that publish to it (``policies.retention.sink_periods``).

A topic the cluster does not have yet is left for the next purge (a sink's topic appears with its first record),
and a topic no Policy gives a period keeps the broker's setting. Each cluster is asked on its own, so one that is
down or refuses does not keep the others from being set; the refusals are raised together afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from crds.connector import ConnectorSpec, KafkaAuth
from crds.policy import Policy
from crds.workflow import WorkflowSpec
from policies.retention import RetentionFor, shared_period, sink_periods

log = logging.getLogger(__name__)

#: connectors.kafka.DEFAULT_EVENTS_TOPIC (not imported: the Kafka connector package loads the engine).
EVENTS_TOPIC = "aiplane.events"


@dataclass(frozen=True)
class _Cluster:
    bootstrap_servers: str
    auth: KafkaAuth | None = None

    def key(self) -> tuple[str, str]:
        return self.bootstrap_servers, self.auth.model_dump_json() if self.auth is not None else ""


@dataclass
class KafkaRetention:
    """``policies``: every Policy now; ``periods``: a workflow's effective retention by name; ``workflows``: the
    workflows now, by name; ``connectors``: a Connector's spec by name; ``secrets``: what the Connectors' ``auth``
    names (``engine.executors.resolvers.SecretResolver``); ``events``: the events bus's bootstrap servers (None:
    no events topic on Kafka)."""

    policies: Callable[[], Iterable[Policy]]
    periods: RetentionFor
    workflows: Callable[[], Mapping[str, WorkflowSpec]]
    connectors: Callable[[str], ConnectorSpec | None]
    secrets: Any = None
    events: str | None = None
    events_topic: str = EVENTS_TOPIC
    #: How long to wait for a cluster before giving it up until the next purge: the purge runs among the worker's
    #: periodic sweeps, which a cluster that is down must not hold up for long (kafka-python's default is 30 s).
    bootstrap_timeout_ms: int = 5000

    def plan(self) -> dict[_Cluster, dict[str, timedelta]]:
        """Per cluster, each topic's period now (the shortest, where two Connectors share a topic)."""
        planned: dict[tuple[str, str], tuple[_Cluster, dict[str, timedelta]]] = {}

        def want(cluster: _Cluster, topic: str, period: timedelta) -> None:
            _, topics = planned.setdefault(cluster.key(), (cluster, {}))
            topics[topic] = min(period, topics.get(topic, period))

        period = shared_period(self.policies(), "events") if self.events else None
        if self.events and period is not None:
            want(_Cluster(self.events), self.events_topic, period)
        for name, period in sink_periods(self.workflows(), self.periods).items():
            spec = self.connectors(name)
            sink = spec.kafka_sink if spec is not None else None
            if sink is not None:
                want(_Cluster(sink.bootstrap_servers, sink.auth), sink.topic, period)
        return {cluster: topics for cluster, topics in planned.values()}

    def apply(self) -> dict[str, int]:
        """Set every planned topic's ``retention.ms``; returns what was set (topic -> ms). Raises
        ``TopicRetentionError`` naming what some cluster refused, once every cluster was asked."""
        from connectors.kafka.clients import security_settings
        from policies.retention_kafka import TopicRetentionError, set_topic_retention

        done: dict[str, int] = {}
        errors: list[str] = []
        for cluster, topics in self.plan().items():
            try:
                client = {
                    "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
                    **security_settings(cluster.auth, self.secrets),
                }
                done.update(set_topic_retention(cluster.bootstrap_servers, topics, skip_missing=True, **client))
            except Exception as error:  # one cluster down, refusing, or without its Secret: report, go on
                errors.append(f"{cluster.bootstrap_servers}: {error}")
        if done:
            log.info("kafka topic retention set", extra={"topics": done})
        if errors:
            raise TopicRetentionError("cannot set topic retention on " + "; ".join(errors))
        return done

    def __call__(self, _purged: object) -> None:
        self.apply()
