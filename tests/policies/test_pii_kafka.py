"""PII masking on the real Kafka sink: a kafkaSink step's record, read back from the broker byte for byte, holds
masks, not the personal data of the task's input or of the model's answer; an auditor's role opens the tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.kafka.routing import ConnectorRecordSink
from engine import Engine, StaticConnectorResolver, StaticSecretResolver, TaskState
from policies.masking import WorkflowMasking, detokenize
from tests.connectors.kafkaio import read_all
from tests.engine.conftest import fast_worker, wait_done
from tests.fixtures.downstream import Downstream, Reply
from tests.fixtures.kafka import Kafka
from tests.policies.test_pii_engine import ANSWER, CLAIM, KEYS, POLICY, SECRETS, WORKFLOW, models


@pytest.fixture(autouse=True)
def extractor(downstream: Downstream) -> None:
    downstream.script("/models/m/extract", Reply(body=ANSWER))


def test_kafka_sink_records_carry_masks_not_personal_data(tmp_path: Path, downstream: Downstream, kafka: Kafka) -> None:
    topic = kafka.new_topic(prefix="pii-decisions")
    resolver = StaticConnectorResolver(
        {
            "decisions": {
                "type": "kafkaSink",
                "kafkaSink": {
                    "bootstrapServers": kafka.bootstrap_servers,
                    "topic": topic,
                    "key": "input.claimId",
                    "value": {
                        "claimant": "input.claimant",
                        "description": "input.description",
                        "adjuster": "steps.extract.output.adjuster",
                    },
                },
            }
        }
    )
    sink = ConnectorRecordSink(resolver, StaticSecretResolver())
    try:
        with Engine(
            f"sqlite:///{tmp_path / 'engine.db'}",
            model_resolver=models(downstream),
            connector_resolver=resolver,
            sink=sink,
            sqlite_synchronous="NORMAL",
            pii=WorkflowMasking(lambda workflow: POLICY, KEYS),
        ) as engine:
            engine.register_workflow("claims", WORKFLOW)
            with fast_worker(engine):
                task = wait_done(engine, "acme", engine.submit("acme", "claims", CLAIM).id)
            assert task.state == TaskState.SUCCEEDED, task.error
    finally:
        sink.close()
    (record,) = read_all(kafka.bootstrap_servers, topic, 1)
    raw = record.value.decode()
    for secret in SECRETS:
        assert secret not in raw, f"{secret!r} reached Kafka"
    value = json.loads(raw)
    assert value["claimant"]["email"].startswith("<EMAIL_ADDRESS:t:")
    opened = detokenize(value, POLICY, "acme", KEYS, roles=["auditor"])
    assert opened == {
        "claimant": CLAIM["claimant"],
        "description": CLAIM["description"],
        "adjuster": ANSWER["adjuster"],
    }
