"""``aiplane dev --kafka``: the broker is the bus and the sink, and the manifests' kafkaSource runs in-process, so a
claim put on the source topic becomes a task whose decision lands on the sink topic and whose events are on the
events topic."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import yaml

from aiplane.dev import DEV_TENANT, running
from connectors.kafka import DEFAULT_EVENTS_TOPIC, KafkaBus
from engine import Event, TaskState, WorkerConfig
from engine.bus import Deduplicator
from tests.connectors.kafkaio import headers, produce, read_all
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually


def manifests(folder: Path, claims_in: str, claims_out: str) -> Path:
    """The claims case without its model: a rules step decides, a kafkaSink step publishes."""
    folder.mkdir()
    meta = {"apiVersion": "aiplane.io/v1alpha1"}
    documents = [
        {
            **meta,
            "kind": "Workflow",
            "metadata": {"name": "claims-triage"},
            "spec": {
                "inputSchema": {"type": "object", "required": ["claimId", "amount"]},
                "steps": [
                    {"name": "decide", "type": "rules", "rules": {"set": {"auto": "input.amount <= 5000.0"}}},
                    {
                        "name": "publish",
                        "type": "connector",
                        "connector": {
                            "name": "claims-decisions",
                            "input": {"claimId": "input.claimId", "auto": "vars.auto"},
                        },
                        "end": True,
                    },
                ],
            },
        },
        {
            **meta,
            "kind": "Connector",
            "metadata": {"name": "claims-intake"},
            # The cluster's address, as in the example: dev replaces it with --kafka.
            "spec": {
                "type": "kafkaSource",
                "kafkaSource": {
                    "bootstrapServers": "kafka.kafka.svc:9092",
                    "topic": claims_in,
                    "workflow": "claims-triage",
                    "idempotencyKey": "value.claimId",
                },
            },
        },
        {
            **meta,
            "kind": "Connector",
            "metadata": {"name": "claims-decisions"},
            "spec": {
                "type": "kafkaSink",
                "kafkaSink": {"bootstrapServers": "kafka.kafka.svc:9092", "topic": claims_out, "key": "input.claimId"},
            },
        },
    ]
    (folder / "claims.yaml").write_text(yaml.safe_dump_all(documents))
    return folder


def test_dev_with_kafka_runs_the_claims_case_event_first(kafka: Kafka, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    claims_in, claims_out = f"claims-in-{suffix}", f"claims-out-{suffix}"
    folder = manifests(tmp_path / "manifests", claims_in, claims_out)
    watcher = KafkaBus(kafka.bootstrap_servers)
    completed: dict[str, Event] = {}
    with running(folder, tmp_path / "data", kafka=kafka.bootstrap_servers) as stack:
        assert stack.engine is not None

        def on_completed(event: Event) -> None:
            completed[event.task_id or ""] = event

        watcher.subscribe(Deduplicator(on_completed), types={"task.completed"})
        with stack.engine.worker(WorkerConfig(poll_interval=0.02)):
            claims: list[dict[str, Any]] = [{"claimId": f"C-{suffix}-{n}", "amount": n * 2000.0} for n in range(5)]
            produce(kafka.bootstrap_servers, claims_in, claims)
            records = read_all(kafka.bootstrap_servers, claims_out, 5)
            decisions = {record.key.decode(): json.loads(record.value) for record in records}
            assert decisions == {c["claimId"]: {"claimId": c["claimId"], "auto": c["amount"] <= 5000.0} for c in claims}
            assert all(headers(record)["Idempotency-Key"] for record in records)

            def all_succeeded() -> list[str]:
                page = stack.engine.list(DEV_TENANT, state=TaskState.SUCCEEDED, limit=10)  # type: ignore[union-attr]
                assert sorted(t.idempotency_key or "" for t in page.items) == sorted(c["claimId"] for c in claims)
                return [t.id for t in page.items]

            task_ids = assert_eventually(all_succeeded, timeout=60, interval=0.1)
            # The relay (run by the worker) puts the tasks' events on the broker.
            assert_eventually(lambda: set(task_ids) <= set(completed), timeout=60, interval=0.1)
    watcher.close()
    assert stack.embedded_kafka is not None
    assert stack.embedded_kafka.bus.topic == DEFAULT_EVENTS_TOPIC
