"""A GDPR erasure through the real gateway and engine, with payload logging, tracing and a kafkaSink on the real
broker: afterwards no place aiplane keeps data holds the subject (the store, its payload logs, the spans kept for
``GET /v1/tasks/{id}/trace``, the files of the data dir), the subject's key on the sink topic gets a tombstone and
the compacted topic drops its record, and what stays outside aiplane until compaction or its own retention (the
sink topic's record, the events the bus carried) is in the erasure's answer and its audit record, by place and
count, never by the subject's id."""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from api import create_api_key, create_app
from api.telemetry import install_span_store
from connectors.kafka.sink import KafkaRecordSink
from engine import Engine, StaticConnectorResolver, TaskState, WorkerConfig
from engine.store.purge import Retention
from policies.effective import DataClass
from policies.payloads import PayloadLog
from tests.connectors.kafkaio import read_all
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

SUBJECT = "cust-5e1d7a90"
EMAIL = "mia.lund.5e1d7a@example.org"
OTHER = "cust-0b2c3d4e"
OTHER_EMAIL = "noah.berg@example.org"
WORKFLOW = {
    "steps": [
        {"name": "triage", "type": "rules", "rules": {"set": {"contact": "input.email"}}, "next": "publish"},
        {"name": "publish", "type": "connector", "connector": {"name": "decisions"}},
    ]
}


@pytest.fixture
def setup(kafka: Kafka, tmp_path: Path) -> Iterator[tuple[Engine, TestClient, str, str]]:
    """(engine, gateway client, admin key, sink topic): payloads of every task logged, spans kept, a kafkaSink keyed
    by the customer id on the real broker."""
    topic = _compacted_topic(kafka)
    connectors = {
        "decisions": {
            "type": "kafkaSink",
            "kafkaSink": {"bootstrapServers": kafka.bootstrap_servers, "topic": topic, "key": "input.customerId"},
        }
    }
    sink = KafkaRecordSink(kafka.bootstrap_servers)
    engine = Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        inline_limit=256,  # the larger inputs go to blobs in the data dir
        sqlite_synchronous="NORMAL",
        connector_resolver=StaticConnectorResolver(connectors),
        sink=sink,
        payloads=PayloadLog(lambda workflow: 1.0),
        retention=Retention(lambda workflow: {"results": timedelta(days=30)}),
    )
    engine.register_workflow("claims", WORKFLOW)
    admin = create_api_key(engine, "acme", "dpo", ["admin"])
    app = create_app(engine, span_store=install_span_store())
    try:
        with TestClient(app) as client:
            yield engine, client, admin, topic
    finally:
        engine.close()
        sink.close()


def _compacted_topic(kafka: Kafka) -> str:
    """A one-partition topic with cleanup.policy=compact, compacted as soon as the broker's cleaner looks (its
    closed segments, every 15 s by default): what a sink topic holding personal data should be."""
    name = f"erase-out-{uuid.uuid4().hex[:12]}"
    configs = {
        "cleanup.policy": "compact",
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.001",
        "min.compaction.lag.ms": "0",
        "delete.retention.ms": "100",
    }
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, client_id="aiplane-tests-admin")
    try:
        admin.create_topics([NewTopic(name=name, num_partitions=1, replication_factor=1, topic_configs=configs)])
    finally:
        admin.close()
    return name


def _everything(bootstrap: str, topic: str) -> list[Any]:
    """Every record the topic holds now, from its beginning to its end offset."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        end = consumer.end_offsets([partition])[partition]
        records: list[Any] = []

        def read() -> list[Any]:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            assert consumer.position(partition) >= end, f"at {consumer.position(partition)} of {end}"
            return records

        return assert_eventually(read, timeout=30, interval=0)
    finally:
        consumer.close()


def _assert_compacted_away(kafka: Kafka, topic: str) -> None:
    """The compacted topic drops the subject's record once its key's tombstone is there."""
    # The broker compacts closed segments only: a later record (any key) closes the tombstone's.
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    try:
        producer.send(topic, key=b"later", value=b"{}").get(timeout=30)
    finally:
        producer.close()

    def compacted() -> None:
        held = _everything(kafka.bootstrap_servers, topic)
        assert not [r for r in held if r.key == SUBJECT.encode() and r.value is not None], "not compacted yet"
        assert not [r for r in held if r.value is not None and EMAIL.encode() in r.value]
        assert [r for r in held if r.key == OTHER.encode() and r.value is not None]  # the other subject's stays

    assert_eventually(compacted, timeout=120, interval=2)


def _submit(client: TestClient, key: str, subject: str, email: str) -> str:
    body: dict[str, Any] = {
        "workflow": {"name": "claims"},
        "input": {"customerId": subject, "email": email, "note": f"{email} " + "n" * 300},
        "policy": {"subject": subject},
    }
    response = client.post("/v1/tasks", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


def _files_holding(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_erasure_leaves_no_trace_of_the_subject_and_reports_what_kafka_keeps(
    kafka: Kafka, setup: tuple[Engine, TestClient, str, str], tmp_path: Path
) -> None:
    engine, client, admin, topic = setup
    headers = {"Authorization": f"Bearer {admin}"}
    with engine.worker(WorkerConfig(poll_interval=0.02, lease=timedelta(seconds=10))):
        mine = _submit(client, admin, SUBJECT, EMAIL)
        theirs = _submit(client, admin, OTHER, OTHER_EMAIL)

        def done() -> None:
            for task_id in (mine, theirs):
                assert engine.get("acme", task_id).state == TaskState.SUCCEEDED

        assert_eventually(done, timeout=30, interval=0.05)
        engine.relay.drain()

    # Before: the subject is in every place the test searches afterwards.
    assert _files_holding(tmp_path, EMAIL)
    assert any(EMAIL in json.dumps(r) for r in engine.payload_logs.records(task_id=mine))
    assert client.get(f"/v1/tasks/{mine}/trace", headers=headers).json()["spans"]
    [before] = [r for r in read_all(kafka.bootstrap_servers, topic, 2) if r.key == SUBJECT.encode()]
    assert EMAIL.encode() in before.value

    response = client.post("/v1/erasures", json={"subject": SUBJECT}, headers=headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["tasks"], answer["payloadLogs"]) == (1, 2)  # both steps' payloads
    assert answer["spans"] > 0
    kept = {entry["place"]: entry for entry in answer["remaining"]}
    assert kept["kafka-topic"]["topic"] == topic
    assert (kept["kafka-topic"]["records"], kept["kafka-topic"]["tombstones"]) == (1, 1)
    assert kept["kafka-topic"]["retentionSeconds"] == timedelta(days=30).total_seconds()
    assert kept["events"]["records"] > 0  # published to the bus before the erasure

    # The store, its payload logs, the trace store and the data dir's files hold nothing of the subject.
    assert client.get(f"/v1/tasks/{mine}", headers=headers).status_code == 404
    assert client.get(f"/v1/tasks/{mine}/trace", headers=headers).status_code == 404
    assert install_span_store().spans(mine) == []
    spans = json.dumps([install_span_store().trace(task_id) for task_id in (mine, theirs)], default=str)
    assert SUBJECT not in spans
    assert EMAIL not in spans
    logs = json.dumps(engine.payload_logs.records())
    assert SUBJECT not in logs
    assert EMAIL not in logs
    assert OTHER_EMAIL in logs  # the other subject's stay
    assert engine.get("acme", theirs).input["email"] == OTHER_EMAIL
    assert _files_holding(tmp_path, EMAIL) == []
    assert _files_holding(tmp_path, SUBJECT) == []

    # The sink topic: the subject's key now ends in a tombstone (until compaction, the record is there, which the
    # answer and the audit record report), and the compacted topic then drops the subject's record.
    records = [r for r in read_all(kafka.bootstrap_servers, topic, 3) if r.key == SUBJECT.encode()]
    assert [r.value is None for r in records] == [False, True]
    _assert_compacted_away(kafka, topic)

    # The audit record says all of it, naming the subject by digest only.
    [record] = [r for r in engine.audit.records() if r.kind == "erasure"]
    assert record.seq == answer["auditRecord"]
    details = json.loads(record.details)
    assert details["payloadLogs"] == 2
    assert details["spans"] == answer["spans"]
    assert [entry["place"] for entry in details["remaining"]] == [e["place"] for e in answer["remaining"]]
    assert SUBJECT not in record.details
    assert EMAIL not in record.details


def test_payload_logs_are_purged_by_their_workflows_retention(tmp_path: Path) -> None:
    now = [datetime(2026, 11, 1, tzinfo=UTC)]
    periods: dict[str, dict[DataClass, timedelta]] = {"claims": {"payload_logs": timedelta(days=7)}}
    with Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        sqlite_synchronous="NORMAL",
        clock=lambda: now[0],
        payloads=PayloadLog(lambda workflow: 1.0),
        retention=Retention(lambda workflow: periods.get(workflow, {})),
    ) as engine:
        rules = {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"contact": "input.email"}}}]}
        engine.register_workflow("claims", rules)
        engine.register_workflow("kept", rules)
        ids = [engine.submit("acme", workflow, {"email": EMAIL}).id for workflow in ("claims", "kept")]
        with engine.worker(WorkerConfig(poll_interval=0.02, lease=timedelta(seconds=10))):
            assert_eventually(
                lambda: all(engine.get("acme", i).state == TaskState.SUCCEEDED for i in ids), timeout=30, interval=0.05
            )
        assert engine.purge().payload_logs == 0  # not a week old yet
        now[0] += timedelta(days=8)
        assert engine.purge().as_dict()["payloadLogs"] == 1
        assert [r["workflow"] for r in engine.payload_logs.records()] == ["kept"]  # no period: kept


def test_prediction_payload_logs_are_purged_by_their_models_policies(tmp_path: Path) -> None:
    """A prediction's payload log belongs to no workflow: the ``payloadLogs`` period of the Policies selecting its
    Model purges it (as ``aiplane dev`` and the workers wire it), and a Model no such Policy selects keeps its."""
    from aiplane.retention_cli import engine_retention
    from crds.policy import Policy
    from policies.effective import Target
    from policies.sources import PolicySet

    policy = Policy.model_validate(
        {
            "metadata": {"name": "extractor-logs", "namespace": "default", "generation": 1},
            "spec": {
                "selector": {"kinds": ["Model"], "matchLabels": {"team": "claims"}},
                "retention": {"payloadLogs": "7d"},
            },
        }
    )
    labels = {"extractor": {"team": "claims"}, "scorer": {"team": "fraud"}}
    retention = engine_retention(
        PolicySet([policy]), [], always=True, models=lambda name: Target("Model", name, "default", labels[name])
    )
    now = [datetime(2026, 11, 1, tzinfo=UTC)]
    with Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        sqlite_synchronous="NORMAL",
        clock=lambda: now[0],
        retention=retention,
    ) as engine:
        for model in ("extractor", "scorer"):
            engine.payload_logs.keep({"tenant": "acme", "model": model, "input": {"email": EMAIL}, "output": {}})
        assert engine.purge().payload_logs == 0  # not a week old yet
        now[0] += timedelta(days=8)
        assert engine.purge().payload_logs == 1
        assert [r["model"] for r in engine.payload_logs.records()] == ["scorer"]
