"""Topic retention on a real broker: the events topic gets the shortest events retention of the Policies, each
kafkaSink Connector's topic the shortest results retention of the workflows publishing to it, from ``aiplane purge
--kafka`` and from the workers' periodic purge."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from aiplane import manifests
from aiplane.cli import main
from aiplane.dev import DevStack
from aiplane.kafka_retention import KafkaRetention
from aiplane.retention_cli import workflow_targets
from connectors.kafka import DEFAULT_EVENTS_TOPIC
from crds.connector import Connector, ConnectorSpec
from crds.policy import Policy
from crds.workflow import Workflow, WorkflowSpec
from engine import Engine
from engine.store.purge import Retention
from policies.retention import retention_for
from policies.retention_kafka import TopicRetentionError, set_topic_retention, topic_retention
from policies.sources import PolicySet
from tests.engine.conftest import fast_worker
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually

pytestmark = pytest.mark.integration


def test_sets_and_changes_retention_ms(kafka: Kafka) -> None:
    topic = kafka.new_topic(partitions=1, prefix="retention")
    assert set_topic_retention(kafka.bootstrap_servers, {topic: timedelta(days=30)}) == {topic: 2_592_000_000}
    assert topic_retention(kafka.bootstrap_servers, topic) == 2_592_000_000
    set_topic_retention(kafka.bootstrap_servers, {topic: timedelta(hours=1)})
    assert topic_retention(kafka.bootstrap_servers, topic) == 3_600_000


def test_a_missing_topic_is_a_clear_error(kafka: Kafka) -> None:
    with pytest.raises(TopicRetentionError, match="no-such-topic"):
        set_topic_retention(kafka.bootstrap_servers, {"no-such-topic-for-retention": timedelta(days=1)})


DAY_MS = 86_400_000


def _doc(kind: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "default", **({"labels": labels} if labels else {})}
    return {"apiVersion": "aiplane.io/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}


def _publishing(connector: str) -> dict[str, Any]:
    return {"steps": [{"name": "publish", "type": "connector", "connector": {"name": connector}}]}


def _manifests(kafka: Kafka, events: str, sink: str) -> list[dict[str, Any]]:
    """Two workflows publish to one kafkaSink (the shorter results retention wins), a third to a Connector whose
    topic does not exist yet (left for a later purge); events: the shortest of all Policies."""
    return [
        _doc(
            "Policy",
            "claims",
            {"selector": {"matchLabels": {"team": "claims"}}, "retention": {"events": "2d", "results": "3d"}},
        ),
        _doc(
            "Policy",
            "fraud",
            {"selector": {"matchLabels": {"team": "fraud"}}, "retention": {"events": "5d", "results": "1d"}},
        ),
        _doc("Workflow", "claims", _publishing("out"), {"team": "claims"}),
        _doc("Workflow", "fraud", _publishing("out"), {"team": "fraud"}),
        _doc("Workflow", "later", _publishing("later"), {"team": "claims"}),
        _doc(
            "Connector",
            "out",
            {"type": "kafkaSink", "kafkaSink": {"bootstrapServers": kafka.bootstrap_servers, "topic": sink}},
        ),
        _doc(
            "Connector",
            "later",
            {
                "type": "kafkaSink",
                "kafkaSink": {"bootstrapServers": kafka.bootstrap_servers, "topic": f"{sink}-not-yet"},
            },
        ),
    ]


def test_aiplane_purge_sets_the_events_and_sink_topics(
    kafka: Kafka, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events, sink = kafka.new_topic(partitions=1, prefix="events"), kafka.new_topic(partitions=1, prefix="sink")
    (tmp_path / "all.yaml").write_text(yaml.safe_dump_all(_manifests(kafka, events, sink)))
    argv = ["purge", str(tmp_path / "all.yaml"), "--database", f"sqlite:///{tmp_path / 'engine.db'}"]
    argv += ["--data-dir", str(tmp_path / "data"), "--kafka", kafka.bootstrap_servers, "--events-topic", events]
    Engine(f"sqlite:///{tmp_path / 'engine.db'}", data_dir=tmp_path / "data").close()  # the store, migrated
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["topics"] == {events: 2 * DAY_MS, sink: DAY_MS}
    assert topic_retention(kafka.bootstrap_servers, events) == 2 * DAY_MS
    assert topic_retention(kafka.bootstrap_servers, sink) == DAY_MS


def test_the_workers_purge_sets_topic_retention(kafka: Kafka, tmp_path: Path) -> None:
    """The in-cluster wiring: the engine's periodic purge runs the hook (``Retention.after``) on a worker."""
    events, sink = kafka.new_topic(partitions=1, prefix="events"), kafka.new_topic(partitions=1, prefix="sink")
    resources = [manifests.parse(doc, "test") for doc in _manifests(kafka, events, sink)]
    policies = PolicySet([r for r in resources if isinstance(r, Policy)])
    workflows = {r.metadata["name"]: r for r in resources if isinstance(r, Workflow)}
    connectors = {r.metadata["name"]: r.spec for r in resources if isinstance(r, Connector)}
    periods = retention_for(policies.effective, workflow_targets(list(workflows.values())))
    hook = KafkaRetention(
        policies=policies.policies,
        periods=periods,
        workflows=lambda: {name: w.spec for name, w in workflows.items()},
        connectors=connectors.get,
        events=kafka.bootstrap_servers,
        events_topic=events,
    )
    with (
        Engine(
            f"sqlite:///{tmp_path / 'engine.db'}",
            data_dir=tmp_path / "data",
            sqlite_synchronous="NORMAL",
            retention=Retention(periods, after=hook),
        ) as engine,
        fast_worker(engine, retention_interval=0.05),
    ):

        def set_on_the_broker() -> None:
            assert topic_retention(kafka.bootstrap_servers, events) == 2 * DAY_MS
            assert topic_retention(kafka.bootstrap_servers, sink) == DAY_MS

        assert_eventually(set_on_the_broker, timeout=30)


def test_a_cluster_that_refuses_does_not_stop_the_others(kafka: Kafka) -> None:
    sink = kafka.new_topic(partitions=1, prefix="sink")
    connectors = {
        "up": ConnectorSpec.model_validate(
            {"type": "kafkaSink", "kafkaSink": {"bootstrapServers": kafka.bootstrap_servers, "topic": sink}}
        ),
        "down": ConnectorSpec.model_validate(
            {"type": "kafkaSink", "kafkaSink": {"bootstrapServers": "127.0.0.1:1", "topic": sink}}
        ),
    }
    hook = KafkaRetention(
        policies=lambda: (),
        periods=lambda workflow: {"results": timedelta(hours=1)},
        workflows=lambda: {
            "a": WorkflowSpec.model_validate(_publishing("down")),
            "b": WorkflowSpec.model_validate(_publishing("up")),
        },
        connectors=connectors.get,
    )
    with pytest.raises(TopicRetentionError, match=r"127\.0\.0\.1:1"):
        hook.apply()
    assert topic_retention(kafka.bootstrap_servers, sink) == 3_600_000


def test_aiplane_dev_with_kafka_sets_topic_retention_on_each_purge(kafka: Kafka, tmp_path: Path) -> None:
    """``aiplane dev --kafka``: the Connectors point at the one broker, and the engine's purge sets its topics."""
    sink = f"dev-sink-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "manifests"
    folder.mkdir()
    documents = [
        _doc("Policy", "keep", {"selector": {}, "retention": {"events": "30d", "results": "10d"}}),
        _doc(
            "Workflow",
            "claims",
            {
                "steps": [
                    {"name": "decide", "type": "rules", "rules": {"set": {"ok": "true"}}},
                    {"name": "publish", "type": "connector", "connector": {"name": "out"}, "end": True},
                ]
            },
        ),
        # The cluster's address, as in a real manifest: dev points it at --kafka.
        _doc("Connector", "out", {"type": "kafkaSink", "kafkaSink": {"bootstrapServers": "kafka:9092", "topic": sink}}),
    ]
    (folder / "all.yaml").write_text(yaml.safe_dump_all(documents))
    stack = DevStack(
        manifests_dir=folder,
        data_dir=tmp_path / "data",
        resources=manifests.load([folder]),
        kafka=kafka.bootstrap_servers,
    )
    try:
        engine = stack.start()  # makes the sink topic (and the events topic) on the broker
        engine.purge()
    finally:
        stack.stop()
    assert topic_retention(kafka.bootstrap_servers, sink) == 10 * DAY_MS
    assert topic_retention(kafka.bootstrap_servers, DEFAULT_EVENTS_TOPIC) == 30 * DAY_MS
