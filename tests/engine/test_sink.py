"""kafkaSink connector steps send records to the engine's sink (in-process here; Kafka in the connectors issue)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import Engine, InMemorySink, StaticConnectorResolver, TaskState
from tests.engine.conftest import fast_worker, wait_done

DECISIONS: dict[str, Any] = {
    "type": "kafkaSink",
    "kafkaSink": {"bootstrapServers": "unused:9092", "topic": "claims-out"},
}


def _engine(tmp_path: Path, connectors: dict[str, Any], sink: InMemorySink) -> Engine:
    return Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        connector_resolver=StaticConnectorResolver(connectors),
        sink=sink,
        sqlite_synchronous="NORMAL",
    )


def test_sink_record_is_keyed_and_carries_the_step_key(tmp_path: Path) -> None:
    sink = InMemorySink()
    connectors = {"decisions": {**DECISIONS, "kafkaSink": {**DECISIONS["kafkaSink"], "key": "input.claimId"}}}
    with _engine(tmp_path, connectors, sink) as engine:
        engine.register_workflow(
            "publish",
            {
                "steps": [
                    {
                        "name": "send",
                        "type": "connector",
                        "connector": {"name": "decisions", "input": {"claim": "input.claimId", "ok": "true"}},
                    }
                ]
            },
        )
        with fast_worker(engine):
            task = wait_done(engine, "acme", engine.submit("acme", "publish", {"claimId": "C-1"}).id)
        assert task.state == TaskState.SUCCEEDED
        (record,) = sink.records("claims-out")
        assert record.key == "C-1"
        assert record.value == {"claim": "C-1", "ok": True}
        assert record.headers["Idempotency-Key"] == engine.steps("acme", task.id)[0].idempotency_key
        assert task.result == {"topic": "claims-out", "key": "C-1"}


def test_sink_value_projection_and_default_key(tmp_path: Path) -> None:
    sink = InMemorySink()
    connectors = {"decisions": {**DECISIONS, "kafkaSink": {**DECISIONS["kafkaSink"], "value": {"n": "input.n * 2"}}}}
    with _engine(tmp_path, connectors, sink) as engine:
        engine.register_workflow(
            "publish", {"steps": [{"name": "send", "type": "connector", "connector": {"name": "decisions"}}]}
        )
        with fast_worker(engine):
            task = wait_done(engine, "acme", engine.submit("acme", "publish", {"n": 21}).id)
        (record,) = sink.records("claims-out")
        assert record.key == task.id
        assert record.value == {"n": 42}


def test_unsupported_connector_type_fails_without_retry(tmp_path: Path) -> None:
    connectors = {
        "db": {
            "type": "kafkaSource",
            "kafkaSource": {"bootstrapServers": "unused:9092", "topic": "claims-in", "workflow": "query"},
        }
    }
    with _engine(tmp_path, connectors, InMemorySink()) as engine:
        engine.register_workflow("query", {"steps": [{"name": "q", "type": "connector", "connector": {"name": "db"}}]})
        with fast_worker(engine):
            task = wait_done(engine, "acme", engine.submit("acme", "query", {}).id)
        assert task.state == TaskState.DEAD_LETTERED
        (step,) = engine.steps("acme", task.id)
        assert step.attempts == 1
        assert task.error is not None
        assert task.error["kind"] == "UnsupportedConnector"
        assert "connector steps support http, postgres and kafkaSink" in task.error["message"]
