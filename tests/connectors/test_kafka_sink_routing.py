"""kafkaSink Connectors decide where a workflow's results go: topic, key and projection, and the cluster (with its
credentials), through ``ConnectorRecordSink`` against the real broker."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from connectors.kafka.routing import ConnectorRecordSink
from engine import StaticConnectorResolver, StaticSecretResolver, TaskState
from engine.sinks import Record
from tests.connectors.conftest import EngineFactory
from tests.connectors.kafkaio import headers, read_all
from tests.engine.conftest import QUICK_RETRY, fast_worker, wait_done
from tests.fixtures.kafka import Kafka


def sink_connector(bootstrap: str, topic: str, **extra: Any) -> dict[str, Any]:
    return {"type": "kafkaSink", "kafkaSink": {"bootstrapServers": bootstrap, "topic": topic, **extra}}


def test_each_connector_routes_its_records(make_engine: EngineFactory, kafka: Kafka) -> None:
    decisions, audit = kafka.new_topic(prefix="decisions"), kafka.new_topic(prefix="audit")
    resolver = StaticConnectorResolver(
        {
            "decisions": sink_connector(
                kafka.bootstrap_servers, decisions, key="input.claimId", value={"claim": "input.claimId", "ok": "true"}
            ),
            "audit": sink_connector(kafka.bootstrap_servers, audit),
        }
    )
    sink = ConnectorRecordSink(resolver, StaticSecretResolver())
    try:
        engine = make_engine(connector_resolver=resolver, sink=sink)
        engine.register_workflow(
            "publish",
            {
                "steps": [
                    {"name": "decide", "type": "connector", "connector": {"name": "decisions"}},
                    {"name": "log", "type": "connector", "connector": {"name": "audit", "input": {"n": "input.n"}}},
                ]
            },
        )
        with fast_worker(engine):
            task = wait_done(engine, "acme", engine.submit("acme", "publish", {"claimId": "C-7", "n": 3}).id)
        assert task.state == TaskState.SUCCEEDED, task.error
        decide, _ = engine.steps("acme", task.id)
        (record,) = read_all(kafka.bootstrap_servers, decisions, 1)
        assert record.key == b"C-7"
        assert json.loads(record.value) == {"claim": "C-7", "ok": True}
        assert headers(record)["Idempotency-Key"] == decide.idempotency_key
        (record,) = read_all(kafka.bootstrap_servers, audit, 1)
        assert record.key == task.id.encode()
        assert json.loads(record.value) == {"n": 3}
        # Both Connectors are on the same cluster: one producer serves them.
        assert len(sink._sinks) == 1
    finally:
        sink.close()


def test_a_connector_that_is_not_a_sink_fails_the_attempt(make_engine: EngineFactory) -> None:
    resolver = StaticConnectorResolver({"api": {"type": "http", "http": {"url": "https://example.com/"}}})
    sink = ConnectorRecordSink(resolver)
    with pytest.raises(LookupError, match="'api' is not a kafkaSink Connector"):
        sink.send(Record(topic="t", key="k", value={}, connector="api"))
    with pytest.raises(LookupError, match="names no Connector"):
        sink.send(Record(topic="t", key="k", value={}))


def test_a_missing_auth_secret_is_a_retryable_sink_failure(make_engine: EngineFactory, kafka: Kafka) -> None:
    auth = {"username": {"name": "kafka-user", "key": "u"}, "password": {"name": "kafka-user", "key": "p"}}
    resolver = StaticConnectorResolver(
        {"out": sink_connector(kafka.bootstrap_servers, f"t-{uuid.uuid4().hex[:6]}", auth=auth)}
    )
    sink = ConnectorRecordSink(resolver, StaticSecretResolver())
    engine = make_engine(connector_resolver=resolver, sink=sink)
    engine.register_workflow(
        "publish",
        {"steps": [{"name": "send", "type": "connector", "connector": {"name": "out"}, "retry": QUICK_RETRY}]},
    )
    with fast_worker(engine):
        task = wait_done(engine, "acme", engine.submit("acme", "publish", {}).id)
    assert task.state == TaskState.DEAD_LETTERED
    assert task.error is not None
    assert task.error["kind"] == "SinkUnavailable"
    assert "auth.username needs secret kafka-user/u" in task.error["message"]
    assert engine.steps("acme", task.id)[0].attempts == 3
