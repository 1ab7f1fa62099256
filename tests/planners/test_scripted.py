"""The scripted planner: the first rule whose CEL condition holds answers; bad configs are refused with the field
to fix."""

from __future__ import annotations

from typing import Any

import pytest

from planners import scripted
from planners.errors import PlanError
from tests.planners.requests import entry, request

RULES: dict[str, Any] = {
    "rules": [
        {
            "when": "!('request-document' in succeeded) && state.missingDocuments.size() > 0",
            "action": "request-document",
            "arguments": {"claimId": "state.claimId", "documentType": "state.missingDocuments[0]"},
            "confidence": 0.9,
            "reasoning": "a document is missing",
        },
        {
            "when": "'request-document' in succeeded && !('rerun-extraction' in succeeded)",
            "action": "rerun-extraction",
            "arguments": {"document": "succeeded['request-document'].documentId"},
        },
        {
            "when": "'rerun-extraction' in succeeded",
            "done": True,
            "result": {"claimId": "state.claimId", "fields": "succeeded['rerun-extraction']"},
            "confidence": 0.95,
        },
    ]
}


def test_first_matching_rule_proposes_its_action() -> None:
    answer = scripted.plan(request(config=RULES))
    assert answer.action == "request-document"
    assert answer.arguments == {"claimId": "C-1", "documentType": "police_report"}
    assert (answer.confidence, answer.reasoning, answer.done, answer.escalate) == (
        0.9,
        "a document is missing",
        False,
        False,
    )


def test_the_transcript_moves_the_plan_on_to_done() -> None:
    requested = entry(1, "request-document", "succeeded", {"documentId": "D-9"})
    second = scripted.plan(request(config=RULES, transcript=[requested]))
    assert (second.action, second.arguments) == ("rerun-extraction", {"document": "D-9"})
    assert second.reasoning == "rule 1 matched: 'request-document' in succeeded && !('rerun-extraction' in succeeded)"

    extracted = entry(2, "rerun-extraction", "succeeded", {"amount": 1250.0})
    third = scripted.plan(request(config=RULES, transcript=[requested, extracted]))
    assert third.done
    assert third.action is None
    assert third.result == {"claimId": "C-1", "fields": {"amount": 1250.0}}
    assert third.confidence == 0.95


def test_no_rule_matching_escalates_by_default() -> None:
    answer = scripted.plan(request(config=RULES, state={"claimId": "C-1", "missingDocuments": []}))
    assert answer.escalate
    assert answer.action is None
    assert (answer.confidence, answer.reasoning) == (0.0, "no rule matched")


def test_otherwise_and_a_whole_result_expression() -> None:
    config = {
        "rules": [{"when": "attempts['request-document'] >= 2", "done": True, "result": "last.observation"}],
        "otherwise": {"action": "request-document", "arguments": {"claimId": "'C-' + string(budget.stepsLeft)"}},
    }
    assert scripted.plan(request(config=config)).arguments == {"claimId": "C-5"}
    twice = [entry(1, "request-document", "failed", error="timeout"), entry(2, "request-document", "succeeded", "ok")]
    answer = scripted.plan(request(config=config, transcript=twice))
    assert (answer.done, answer.result) == (True, "ok")


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("goal == 'Complete claim C-1'", True),
        ("actions == ['request-document', 'rerun-extraction', 'notify-adjuster']", True),
        ("last.outcome == 'denied' && last.error == 'not allowed'", True),
        ("transcript.size() == 2 && transcript[0].step == 1", True),
        ("attempts == {'request-document': 1, 'rerun-extraction': 1, 'notify-adjuster': 0}", True),
        ("!('rerun-extraction' in succeeded) && !('request-document' in succeeded)", True),
        ("budget.stepsLeft == 5 && budget.costLeft == 20.0 && budget.secondsLeft > 0.0", True),
        ("last == null", False),
    ],
)
def test_the_cel_variables(when: str, expected: bool) -> None:
    transcript = [
        entry(1, "rerun-extraction", "failed", error="model timed out"),
        entry(2, "request-document", "denied", error="not allowed"),
    ]
    config = {"rules": [{"when": when, "done": True}]}
    assert scripted.plan(request(config=config, transcript=transcript)).done is expected


def test_last_is_null_before_the_first_proposal() -> None:
    assert scripted.plan(request(config={"rules": [{"when": "last == null", "done": True}]})).done


def test_same_request_same_answer() -> None:
    first = scripted.plan(request(config=RULES))
    assert all(scripted.plan(request(config=RULES)) == first for _ in range(3))


def _refusal(config: dict[str, Any], **kwargs: Any) -> PlanError:
    with pytest.raises(PlanError) as raised:
        scripted.plan(request(config=config, **kwargs))
    return raised.value


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"rules": [{"when": "state.x ==", "done": True}]}, "config.rules[0].when", "does not compile"),
        ({"rules": [{"when": "true", "done": True, "confidnce": 0.5}]}, "config.rules[0].confidnce", "Extra inputs"),
        ({"rulez": []}, "config.rulez", "Extra inputs"),
        ({"rules": [{"done": True}]}, "config.rules[0].when", "Field required"),
        ({"rules": [{"when": "true"}]}, "config.rules[0]", "set exactly one of action, done: true or escalate: true"),
        (
            {"rules": [{"when": "true", "done": True, "escalate": True}]},
            "config.rules[0]",
            "(this sets done and escalate)",
        ),
        ({"rules": [{"when": "true", "done": True, "arguments": {"a": "1"}}]}, "config.rules[0]", "go with an action"),
        ({"rules": [{"when": "true", "action": "x", "result": "1"}]}, "config.rules[0]", "result goes with done"),
        ({"rules": [{"when": "true", "done": True, "confidence": 1.5}]}, "config.rules[0].confidence", "less than"),
        (
            {"rules": [{"when": "true", "done": True, "result": {"a": "1 +"}}]},
            "config.rules[0].result",
            "a: CEL expression '1 +' does not compile",
        ),
        (
            {"rules": [{"when": "true", "done": True, "result": {"a": 3}}]},
            "config.rules[0].result",
            "a: must be a CEL expression (a non-empty string), not 3",
        ),
        ({"rules": [{"when": "true", "done": True, "result": 5}]}, "config.rules[0].result", "must be a map of name"),
        ({"rules": [{"when": "x" * 5000, "done": True}]}, "config.rules[0].when", "longer than 4096 characters"),
        ({"rules": [{"when": "true", "action": "fly"}]}, "config.rules[0].action", "'fly' is not one of"),
        ({"otherwise": {"action": "fly"}}, "config.otherwise.action", "request-document, rerun-extraction"),
        (
            {"rules": [{"when": "true", "action": "request-document", "arguments": {"claimId": "'"}}]},
            "config.rules[0].arguments.claimId",
            "does not compile",
        ),
    ],
)
def test_bad_config_is_a_400_naming_the_field(config: dict[str, Any], field: str, message: str) -> None:
    error = _refusal(config)
    assert error.status == 400
    assert any(e["field"] == field and message in e["message"] for e in error.errors), error.errors
    problem = error.problem()
    assert problem["type"] == "https://aiplane.io/problems/invalid-planner-config"
    assert problem["status"] == 400
    assert field in problem["detail"]


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"rules": [{"when": "state.nope == 1", "done": True}]}, "config.rules[0].when", "no such key"),
        ({"rules": [{"when": "state.claimId", "done": True}]}, "config.rules[0].when", "gave str 'C-1', not a bool"),
        (
            {"rules": [{"when": "true", "done": True, "result": {"x": "1 / 0"}}]},
            "config.rules[0].result.x",
            "failed over this request",
        ),
    ],
)
def test_an_expression_that_fails_over_the_request_is_a_422(config: dict[str, Any], field: str, message: str) -> None:
    error = _refusal(config)
    assert error.status == 422
    assert error.errors[0]["field"] == field
    assert message in error.detail
