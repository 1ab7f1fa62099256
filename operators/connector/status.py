"""Folds what the operator found (secrets, the broker's answer, the consumer Deployment) into ``Connector.status``:
Ready and Degraded conditions whose messages say what to fix. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crds.connector import Connector, ConnectorStatus
from operators.connector.broker import Probe
from operators.model.status import Conditions

READY = "Ready"
DEGRADED = "Degraded"


@dataclass(frozen=True)
class Consumers:
    """The consumer Deployment of a kafkaSource as last seen: replicas asked of it and ready."""

    desired: int
    ready: int


@dataclass(frozen=True)
class Found:
    """Everything one reconcile learnt about a Connector."""

    missing_secrets: list[str]
    probe: Probe | None = None  # Kafka types only
    consumers: Consumers | None = None  # kafkaSource only, once its Deployment exists
    desired: int | None = None  # kafkaSource: the spec's replicas capped at the partitions
    forbidden: str | None = None  # the operator may not read what it checks: what to grant
    forbidden_reason: str = "SecretsForbidden"
    account: str | None = None  # a governed kafkaSource: the ServiceAccount its consumer pods run as
    account_missing: bool = False  # ... is not in the Connector's namespace
    account_denied: list[str] = field(default_factory=list)  # ... may not do these ("verb resource") there


def _problem(connector: Connector, found: Found) -> tuple[str, str] | None:
    """The reason and message of what keeps the Connector from working, worst first."""
    namespace = connector.metadata.get("namespace", "")
    if found.forbidden is not None:
        return found.forbidden_reason, found.forbidden
    account: list[str] = []
    if found.account is not None and found.account_missing:
        account.append(
            f"ServiceAccount {found.account!r} does not exist in namespace {namespace}: governed consumer pods run "
            f"as it (operator setting AIPLANE_CONNECTOR_SERVICE_ACCOUNT); create it there and {_ROLE}"
        )
    if found.missing_secrets:
        # Both at once, so whoever sets up a namespace learns everything it lacks from one message.
        secrets = f"{'; '.join(found.missing_secrets)}; create it in namespace {namespace}"
        return "SecretMissing", "; ".join([secrets, *account])
    if account:
        return "ServiceAccountMissing", account[0]
    if found.account is not None and found.account_denied:
        return "ServiceAccountNotAuthorized", (
            f"ServiceAccount {found.account!r} may not {', '.join(found.account_denied)} (group aiplane.io) in "
            f"namespace {namespace}, which governed consumer pods need to start; {_ROLE}"
        )
    kafka = connector.spec.kafka_source or connector.spec.kafka_sink
    if kafka is not None and found.probe is not None:
        if not found.probe.reachable:
            return "BrokerUnreachable", f"{found.probe.error}; check spec.{_block(connector)}.bootstrapServers"
        if found.probe.partitions is None:
            return (
                "TopicMissing",
                f"topic {kafka.topic!r} does not exist on {kafka.bootstrap_servers}; create it or fix "
                f"spec.{_block(connector)}.topic",
            )
    return None


_ROLE = (
    "bind it a Role with get, list and watch on workflows, models, connectors and policies (group aiplane.io), "
    "as the chart does in its namespace"
)


def _block(connector: Connector) -> str:
    return "kafkaSource" if connector.spec.kafka_source is not None else "kafkaSink"


def fold(connector: Connector, *, generation: int, found: Found, now: datetime) -> ConnectorStatus:
    previous = connector.status or ConnectorStatus()
    make = Conditions(previous.conditions, generation, now)
    problem = _problem(connector, found)
    partitions = found.probe.partitions if found.probe is not None else None
    source = connector.spec.kafka_source
    update: dict[str, Any] = {
        "observed_generation": generation,
        # An unreachable broker says nothing new about the topic: keep the count last seen.
        "partitions": previous.partitions if found.probe is not None and not found.probe.reachable else partitions,
        "replicas": found.desired if source is not None else None,
        "ready_replicas": (found.consumers.ready if found.consumers else 0) if source is not None else None,
    }
    if source is not None and found.desired is None:
        update["replicas"] = found.consumers.desired if found.consumers else previous.replicas
    if problem is not None:
        reason, message = problem
        if found.consumers is not None:
            message += " (the consumer Deployment is left as it was)"
        ready = make(READY, False, reason, message)
        degraded = make(DEGRADED, True, reason, message)
    elif source is not None:
        desired = found.desired or 0
        have = found.consumers.ready if found.consumers is not None else 0
        capped = ""
        if partitions is not None and source.replicas > desired:
            capped = f" (spec.kafkaSource.replicas is {source.replicas}; topic {source.topic!r} has {partitions} "
            capped += "partitions, and a consumer beyond them would idle)"
        if found.consumers is not None and found.consumers.desired == desired and have >= desired:
            ready = make(READY, True, "ConsumersReady", f"{have}/{desired} consumers ready{capped}")
        else:
            ready = make(READY, False, "ConsumersNotReady", f"{have}/{desired} consumers ready{capped}")
        missing = found.probe.dead_letters_missing if found.probe is not None else None
        if missing is not None:
            # The consumers run (Ready says how many), but the first message that cannot become a task would stall
            # them: degraded while working, as an OpenShift ClusterOperator is Available and Degraded at once.
            degraded = make(
                DEGRADED,
                True,
                "DeadLetterTopicMissing",
                f"dead-letter topic {missing!r} does not exist on {source.bootstrap_servers}: the first message that "
                "cannot become a task stalls the source unless the broker creates topics on first use "
                "(auto.create.topics.enable); create it or set spec.kafkaSource.deadLetterTopic",
            )
        else:
            degraded = make(DEGRADED, False, "AsExpected")
    else:
        what = {
            "kafkaSink": "the broker has the topic; steps publish from the engine's workers",
            "http": "its secrets resolve; steps call it from the engine's workers",
            "postgres": "its secrets resolve; steps query it from the engine's workers",
        }.get(connector.spec.type, "")
        ready = make(READY, True, "Resolved", what)
        degraded = make(DEGRADED, False, "AsExpected")
    update["conditions"] = [ready, degraded]
    return previous.model_copy(update=update)


def invalid(previous: ConnectorStatus | None, generation: int, problems: str, now: datetime) -> ConnectorStatus:
    """Status of a Connector whose spec does not parse: nothing is applied."""
    before = previous or ConnectorStatus()
    make = Conditions(before.conditions, generation, now)
    return before.model_copy(
        update={
            "observed_generation": generation,
            "conditions": [make(READY, False, "InvalidSpec", problems), make(DEGRADED, True, "InvalidSpec", problems)],
        }
    )


def to_patch(status: ConnectorStatus) -> dict[str, Any]:
    body: dict[str, Any] = status.model_dump(by_alias=True, mode="json")
    return body
