"""Lineage through the real engine: which workflow version, input and model version/endpoint and connector
produced a task's result, with a decision record per step (a model's scores and explanation when it gives them),
and every Policy version that governed the task."""

from __future__ import annotations

from typing import Any

from crds.policy import Policy
from engine import Engine, TaskState
from policies.effective import Target, applicable
from policies.lineage import input_hash
from policies.masking import WorkflowMasking
from policies.sources import PolicySet
from tests.engine.conftest import Downstream, EngineFactory, Reply, connector_step, fast_worker, wait_done
from tests.policies.test_pii_engine import KEYS


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
                    "rules": {
                        "set": {"alert": "steps.score.output.scores.fraud > 0.5"},
                        "branches": [
                            {"when": "input.a > 5", "next": "notify"},
                            {"when": "vars.alert", "next": "notify"},
                            {"when": "true", "next": "notify"},
                        ],
                    },
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
    # Which rules fired: the conditions tried in order with their verdicts (the one after the match never ran).
    assert decide["decision"] == {
        "vars": {"alert": True},
        "next": "notify",
        "branches": [
            {"when": "input.a > 5", "next": "notify", "matched": False},
            {"when": "vars.alert", "next": "notify", "matched": True},
        ],
    }
    assert notify["decision"] == {"connector": "c"}
    assert [s["state"] for s in found["steps"]] == ["succeeded"] * 3


def _policy(name: str, generation: int, spec: dict[str, Any], namespace: str = "default") -> Policy:
    return Policy.model_validate(
        {"metadata": {"name": name, "namespace": namespace, "generation": generation}, "spec": spec}
    )


CLAIMS = Target("Workflow", "claims", "default", {"team": "claims"})
TEAM = {"matchLabels": {"team": "claims"}}


def test_lineage_names_every_policy_version_that_governed_the_task(
    make_engine: EngineFactory, db_url: str, downstream: Downstream
) -> None:
    """The Policies governing the workflow at intake (access, residency, retention: allowing decisions leave no
    audit record) and those the task's audit records name (the masking of a step's output by a Policy changed
    after the task came in), not a Policy of another workflow nor a read of the task afterwards."""
    policies = PolicySet(
        [
            _policy("pii", 4, {"selector": TEAM, "pii": {"entities": ["EMAIL_ADDRESS"]}}),
            _policy(
                "tenants", 2, {"selector": TEAM, "access": {"tenants": ["acme"]}, "residency": {"regions": ["eu"]}}
            ),
            _policy("keep", 7, {"selector": TEAM, "retention": {"results": "30d"}}),
            _policy("other", 1, {"selector": {"matchLabels": {"team": "fraud"}}, "retention": {"inputs": "1d"}}),
        ]
    )

    def effective(workflow: str) -> Any:
        return policies.effective(CLAIMS if workflow == "claims" else Target("Workflow", workflow))

    engine = make_engine(
        db_url,
        pii=WorkflowMasking(lambda workflow: effective(workflow).pii, KEYS),
        tenants=lambda workflow: effective(workflow).tenants,
        governing=lambda workflow: applicable(policies.policies(), CLAIMS) if workflow == "claims" else [],
    )
    downstream.script("/models/m/score", Reply(body={"label": "ok", "contact": "ann.adjuster@insurer-mail.com"}))
    engine.register_workflow(
        "claims",
        {
            "steps": [
                {"name": "score", "type": "model", "model": {"name": "m", "api": "score", "input": {"a": "input.a"}}}
            ]
        },
    )
    task = engine.submit("acme", "claims", {"a": "jane.roe@example.com"})
    # The PII Policy changes before the task runs: its output is masked under the new version.
    policies.replace(
        [
            *(p for p in policies.policies() if p.metadata["name"] != "pii"),
            _policy("pii", 5, {"selector": TEAM, "pii": {"entities": ["EMAIL_ADDRESS"]}}),
        ]
    )
    with fast_worker(engine):
        assert wait_done(engine, "acme", task.id).state == TaskState.SUCCEEDED

    found = engine.lineage("acme", task.id)
    assert found["policies"] == ["default/keep@7", "default/pii@4", "default/pii@5", "default/tenants@2"]
    output = engine.steps("acme", task.id)[0].output
    assert "ann.adjuster@insurer-mail.com" not in str(output)
