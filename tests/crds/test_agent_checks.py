"""What an agent step must satisfy beyond its schema (``crds.checks``): the engine and the Workflow operator
refuse the same specs."""

from __future__ import annotations

from typing import Any

from crds import checks
from crds.workflow import WorkflowSpec


def agent_spec(**agent: Any) -> WorkflowSpec:
    block: dict[str, Any] = {
        "goal": "Complete claim {{ input.claimId }}",
        "planner": {"model": "planner"},
        "actions": [{"name": "extract", "description": "Extract the fields.", "model": {"name": "extractor"}}],
        **agent,
    }
    steps = [{"name": "agent", "type": "agent", "agent": block}, {"name": "review", "type": "approval", "approval": {}}]
    return WorkflowSpec.model_validate({"steps": steps})


def test_a_valid_agent_has_no_problems() -> None:
    assert checks.problems(agent_spec(escalation={"to": "review", "when": "proposal.confidence < 0.9"})) == []


def test_repeated_action_names_are_refused() -> None:
    action = {"name": "extract", "description": "Again.", "connector": {"name": "mail"}}
    spec = agent_spec(actions=[{"name": "extract", "description": "Extract.", "model": {"name": "extractor"}}, action])
    (problem,) = checks.problems(spec)
    assert problem.field == "steps.agent.agent.actions"
    assert "repeated: extract" in problem.message


def test_escalation_must_name_a_step() -> None:
    (problem,) = checks.problems(agent_spec(escalation={"to": "nowhere"}))
    assert problem.reason == "UnknownStep"
    assert problem.field == "steps.agent.agent.escalation.to"


def test_goal_template_and_state_expressions_must_compile() -> None:
    spec = agent_spec(goal="Complete claim {{ input.claimId + }}", state={"claim": "input.("})
    fields = sorted(problem.field for problem in checks.problems(spec))
    assert fields == ["steps.agent.agent.goal[0]", "steps.agent.agent.state.claim"]


def test_render_template_evaluates_each_part() -> None:
    values = {"input.claimId": "C-1", "input.amount": 12.5}
    rendered = checks.render_template("Claim {{ input.claimId }} of {{input.amount}}", values.__getitem__)
    assert rendered == "Claim C-1 of 12.5"


def test_an_escalation_back_to_the_agent_is_a_cycle() -> None:
    steps = [
        {
            "name": "agent",
            "type": "agent",
            "agent": {
                "goal": "g",
                "planner": {"model": "planner"},
                "actions": [{"name": "a", "description": "d", "model": {"name": "m"}}],
                "escalation": {"to": "review"},
            },
            "end": True,
        },
        {"name": "review", "type": "approval", "approval": {}, "next": "agent"},
    ]
    problems = checks.problems(WorkflowSpec.model_validate({"steps": steps}))
    assert [problem.reason for problem in problems] == ["Cycle"]
