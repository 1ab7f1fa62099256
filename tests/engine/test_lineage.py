"""Lineage through the real engine: which workflow version, input and model version/endpoint and connector
produced a task's result, with a decision record per step (a model's scores and explanation when it gives them)."""

from __future__ import annotations

from engine import Engine, TaskState
from policies.lineage import input_hash
from tests.engine.conftest import Downstream, Reply, connector_step, fast_worker, wait_done


def test_lineage_names_every_producer_of_the_result(engine: Engine, downstream: Downstream) -> None:
    downstream.script(
        "/models/m/score",
        Reply(body={"label": "fraud", "scores": {"fraud": 0.91}, "explanation": {"top": ["amount"]}, "other": 1}),
    )
    version = engine.register_workflow(
        "triage",
        {
            "steps": [
                {"name": "score", "type": "model", "model": {"name": "m", "api": "score", "input": {"a": "input.a"}}},
                {
                    "name": "decide",
                    "type": "rules",
                    "rules": {"set": {"alert": "steps.score.output.scores.fraud > 0.5"}},
                },
                connector_step("notify"),
            ]
        },
    )
    with fast_worker(engine):
        task = engine.submit("acme", "triage", {"a": 1})
        assert wait_done(engine, "acme", task.id).state == TaskState.SUCCEEDED

    found = engine.lineage("acme", task.id)
    assert found["workflow"] == {"name": "triage", "version": version}
    assert found["inputHash"] == input_hash({"a": 1})
    score, decide, notify = found["steps"]
    assert score["decision"] == {
        "model": "m",
        "version": "v1",
        "endpoint": downstream.url("/models/m/score"),
        "scores": {"fraud": 0.91},
        "explanation": {"top": ["amount"]},
    }
    assert decide["decision"] == {"vars": {"alert": True}, "next": None}
    assert notify["decision"] == {"connector": "c"}
    assert [s["state"] for s in found["steps"]] == ["succeeded"] * 3
