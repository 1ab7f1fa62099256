"""The Workflow operator's checks without a cluster: the spec's own rules (``crds.checks``, shared with the engine)
and what the namespace must hold, folded into the Valid and Ready conditions."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest

from crds import checks
from crds.workflow import WorkflowSpec
from operators.workflow import status, validation
from operators.workflow.validation import ConnectorSeen, Namespace

NOW = datetime(2026, 1, 1, tzinfo=UTC)
WORLD = Namespace(
    models={"extractor": True},
    connectors={
        "out": ConnectorSeen(type="kafkaSink", ready=True),
        "db": ConnectorSeen(type="postgres", queries=("save", "load"), ready=True),
        "intake": ConnectorSeen(type="kafkaSource", ready=True),
    },
    policies=frozenset({"pii"}),
)


def spec(*steps: dict[str, Any], **extra: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate({"steps": list(steps), **extra})


def model_step(name: str = "extract", model: str = "extractor", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "model", "model": {"name": model}, **extra}


def rules_step(name: str, **rules: Any) -> dict[str, Any]:
    return {"name": name, "type": "rules", "rules": rules}


def test_a_valid_spec_has_no_problems() -> None:
    valid = spec(
        model_step(),
        rules_step(
            "decide", set={"ok": "steps.extract.output.amount < 10.0"}, branches=[{"when": "vars.ok", "next": "out"}]
        ),
        {"name": "review", "type": "approval", "approval": {}},
        {"name": "out", "type": "connector", "connector": {"name": "out"}},
        policies=["pii"],
    )
    assert validation.problems(valid, WORLD, "ns") == []


def test_a_cycle_names_the_step_that_closes_it() -> None:
    looping = spec(model_step("a"), rules_step("b", default="a"))
    (problem,) = checks.problems(looping)
    assert problem.reason == "Cycle"
    assert problem.field == "steps.b.rules.default"
    assert "step 'b' rules.default leads back to 'a', a cycle (a -> b -> a)" in problem.message


def test_an_approval_that_jumps_back_is_a_cycle() -> None:
    looping = spec(model_step("a"), {"name": "ok", "type": "approval", "approval": {"onReject": "a"}})
    (problem,) = checks.problems(looping)
    assert (problem.reason, problem.field) == ("Cycle", "steps.ok.approval.onReject")


def test_jumping_forward_is_no_cycle() -> None:
    forward = spec(
        rules_step("a", branches=[{"when": "true", "next": "c"}]), model_step("b", next="c"), model_step("c")
    )
    assert checks.problems(forward) == []


def test_an_unknown_step_is_named() -> None:
    dangling = spec(model_step("a", next="nowhere"))
    (problem,) = checks.problems(dangling)
    assert (problem.reason, problem.field) == ("UnknownStep", "steps.a.next")
    assert problem.message == "step 'a' next names 'nowhere', which is not a step of this workflow"


def test_an_expression_that_does_not_compile_is_named_with_where_it_is() -> None:
    broken = spec(rules_step("r", set={"x": "input.a >"}))
    (problem,) = checks.problems(broken)
    assert (problem.reason, problem.field) == ("CelCompileError", "steps.r.rules.set.x")
    assert problem.message.startswith("step 'r' rules.set.x: cannot compile CEL expression 'input.a >'")


@pytest.mark.parametrize(
    ("step", "reason", "says"),
    [
        (
            model_step(model="nope"),
            "ModelNotFound",
            "step 'extract' calls Model 'nope', which does not exist in namespace ns",
        ),
        (
            {"name": "s", "type": "connector", "connector": {"name": "nope"}},
            "ConnectorNotFound",
            "step 's' calls Connector 'nope', which does not exist in namespace ns",
        ),
        (
            {"name": "s", "type": "connector", "connector": {"name": "intake"}},
            "ConnectorNotCallable",
            "Connector 'intake' of type kafkaSource, which a step cannot call",
        ),
        (
            {"name": "s", "type": "connector", "connector": {"name": "db", "operation": "drop"}},
            "QueryNotFound",
            "step 's' runs query 'drop', which postgres Connector 'db' does not have (it has: save, load)",
        ),
        (
            {"name": "s", "type": "connector", "connector": {"name": "db"}},
            "QueryNotFound",
            "set connector.operation to one of: save, load",
        ),
    ],
)
def test_what_the_namespace_lacks_is_named(step: dict[str, Any], reason: str, says: str) -> None:
    (problem,) = validation.problems(spec(step), WORLD, "ns")
    assert problem.reason == reason
    assert says in problem.message


def test_an_unknown_policy_is_named() -> None:
    (problem,) = validation.problems(spec(model_step(), policies=["pii", "gone"]), WORLD, "ns")
    assert (problem.reason, problem.field) == ("PolicyNotFound", "policies")


def test_invalid_keeps_the_last_valid_version_and_says_so() -> None:
    valid = status.fold(None, generation=1, version="v1", problems=[], unready=[], now=NOW)
    assert valid.version == "v1"
    assert [(c.type, c.status, c.reason) for c in valid.conditions] == [
        ("Valid", "True", "Valid"),
        ("Ready", "True", "Published"),
    ]
    broken = [checks.Problem("steps.a.next", "step 'a' next names 'x'", reason="UnknownStep")]
    invalid = status.fold(valid, generation=2, version="v2", problems=broken, unready=[], now=NOW)
    assert invalid.version == "v1"
    assert invalid.observed_generation == 2
    valid_condition = invalid.conditions[0]
    assert (valid_condition.status, valid_condition.reason) == ("False", "UnknownStep")
    assert valid_condition.message == "step 'a' next names 'x' (new tasks still run version v1, the last valid one)"
    assert invalid.conditions[1].reason == "Invalid"


def test_a_model_that_is_not_ready_keeps_the_workflow_from_ready_but_valid() -> None:
    world = Namespace(models={"extractor": False})
    the_spec = spec(model_step())
    assert validation.problems(the_spec, world, "ns") == []
    unready = validation.unready(the_spec, world)
    assert unready == ["Model/extractor"]
    folded = status.fold(None, generation=1, version="v1", problems=[], unready=unready, now=NOW)
    assert [(c.type, c.status, c.reason) for c in folded.conditions] == [
        ("Valid", "True", "Valid"),
        ("Ready", "False", "DependenciesNotReady"),
    ]


def test_the_version_is_the_hash_the_engine_always_stored() -> None:
    # Versions already in a store were sha256 over the engine's canonical JSON; moving the function kept them.
    from engine.store.types import dumps

    the_spec = spec(model_step())
    expected = hashlib.sha256(dumps(checks.canonical(the_spec)).encode()).hexdigest()[:16]
    assert checks.version_of(the_spec) == expected
    assert checks.version_of(spec(model_step(timeout="5s"))) != expected


def agent_step(**agent: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "goal": "Complete claim {{ input.claimId }}",
        "planner": {"model": "planner"},
        "actions": [
            {"name": "extract", "description": "Extract.", "model": {"name": "extractor"}},
            {"name": "mail", "description": "Ask for a document.", "connector": {"name": "mailer"}},
            {"name": "refund", "description": "Refund.", "workflow": {"name": "refund"}},
        ],
        **agent,
    }
    return {"name": "agent", "type": "agent", "agent": block}


def test_an_agent_names_existing_planner_models_connectors_and_workflows() -> None:
    world = Namespace(
        models={"extractor": True, "planner": False},
        connectors={"mailer": ConnectorSeen(type="http", ready=True)},
        workflows=frozenset({"refund"}),
    )
    assert validation.problems(spec(agent_step()), world, "ns") == []
    assert validation.unready(spec(agent_step()), world) == ["Model/planner"]

    empty = Namespace(models={"extractor": True}, workflows=frozenset())
    found = {(p.field, p.reason) for p in validation.problems(spec(agent_step()), empty, "ns")}
    assert found == {
        ("steps.agent.agent.planner.model", "ModelNotFound"),
        ("steps.agent.agent.actions.mail.connector.name", "ConnectorNotFound"),
        ("steps.agent.agent.actions.refund.workflow.name", "WorkflowNotFound"),
    }
    # Workflows not known (None): not checked.
    assert all(p.reason != "WorkflowNotFound" for p in validation.problems(spec(agent_step()), WORLD, "ns"))


def test_an_agent_action_cannot_call_a_kafka_source() -> None:
    world = Namespace(models={"extractor": True, "planner": True}, connectors=WORLD.connectors)
    step = agent_step(actions=[{"name": "feed", "description": "No.", "connector": {"name": "intake"}}])
    (problem,) = validation.problems(spec(step), world, "ns")
    assert (problem.field, problem.reason) == ("steps.agent.agent.actions.feed.connector.name", "ConnectorNotCallable")
