"""An erasure tombstones what the subject's tasks published to kafkaSink topics, from a connector step or an agent's
connector action, through the engine's sink (the in-process one here; the real broker in
tests/policies/test_erasure_everywhere.py), and reports each topic's records by count, never by key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine import Accepted, Engine, InMemorySink, StaticConnectorResolver, Submission, TaskState
from tests.engine.conftest import fast_worker, wait_done
from tests.engine.test_agent import PLAN, act, done, models
from tests.fixtures.downstream import Downstream

SUBJECT = "cust-9a8b7c6d"
SINKS = {
    "decisions": {"type": "kafkaSink", "kafkaSink": {"bootstrapServers": "unused:9092", "topic": "decisions"}},
    "notices": {"type": "kafkaSink", "kafkaSink": {"bootstrapServers": "unused:9092", "topic": "notices"}},
}
WORKFLOW = {
    "steps": [
        {
            "name": "agent",
            "type": "agent",
            "agent": {
                "goal": "Notify about claim {{ input.claimId }}",
                "planner": {"model": "planner"},
                "actions": [
                    {"name": "notify", "description": "Tell the claimant.", "connector": {"name": "notices"}},
                ],
            },
            "next": "publish",
        },
        {"name": "publish", "type": "connector", "connector": {"name": "decisions"}},
    ]
}


def test_an_erasure_tombstones_the_sink_records_of_steps_and_agent_actions(tmp_path: Path) -> None:
    downstream = Downstream()
    sink = InMemorySink()
    try:
        with Engine(
            f"sqlite:///{tmp_path / 'engine.db'}",
            data_dir=tmp_path / "data",
            sqlite_synchronous="NORMAL",
            model_resolver=models(downstream),
            connector_resolver=StaticConnectorResolver(SINKS),
            sink=sink,
        ) as engine:
            engine.register_workflow("claims", WORKFLOW)
            downstream.script(PLAN, act("notify", text="hello"), done())
            with fast_worker(engine):
                [accepted] = engine.submit_many(
                    [
                        Submission(
                            tenant="acme", workflow="claims", input={"claimId": "C-1"}, annotations={"subject": SUBJECT}
                        )
                    ]
                )
                assert isinstance(accepted, Accepted)
                assert wait_done(engine, "acme", accepted.task.id).state == TaskState.SUCCEEDED
            task_id = accepted.task.id
            assert [(r.key, r.tombstone) for r in sink.records("notices")] == [(task_id, False)]
            assert [(r.key, r.tombstone) for r in sink.records("decisions")] == [(task_id, False)]

            erased = engine.erase(SUBJECT, actor="dpo")

            assert erased.tasks == (task_id,)
            topics: dict[str, Any] = {e["topic"]: e for e in erased.beyond["remaining"] if e["place"] == "kafka-topic"}
            assert {t: (e["records"], e["tombstones"]) for t, e in topics.items()} == {
                "decisions": (1, 1),
                "notices": (1, 1),
            }
            for topic in ("notices", "decisions"):
                tombstone = sink.records(topic)[-1]
                assert (tombstone.key, tombstone.tombstone, tombstone.value) == (task_id, True, None)
            [record] = [r for r in engine.audit.records() if r.kind == "erasure"]
            assert SUBJECT not in record.details
            assert json.loads(record.details)["remaining"] == erased.beyond["remaining"]
    finally:
        downstream.close()
