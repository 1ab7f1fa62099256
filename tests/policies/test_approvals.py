"""Approval rules over a task: which trigger (failing closed), and the requirement they add up to."""

from __future__ import annotations

import re
from typing import Any

import pytest

from crds.policy import Policy
from policies.approvals import ApprovalRuleError, requirement, triggered, variables
from policies.effective import PolicyRef, combine


def rules(name: str, *approvals: dict[str, Any]) -> Policy:
    return Policy.model_validate(
        {"metadata": {"name": name, "namespace": "claims", "generation": 1}, "spec": {"approvals": list(approvals)}}
    )


GOVERNANCE = combine(
    [
        rules(
            "claims",
            {"name": "large", "when": "input.amount > 10000", "roles": ["approver", "admin"]},
            {"name": "unsure", "when": "result.confidence < 0.8", "quorum": 2},
        ),
        rules("finance", {"name": "large", "when": "input.amount > 5000.0", "roles": ["approver"], "quorum": 3}),
    ]
).approvals


def test_nothing_triggers_for_a_small_confident_claim() -> None:
    activation = variables({"amount": 120}, result={"confidence": 0.97})
    assert triggered(GOVERNANCE, activation) == []
    assert requirement([]) is None


def test_the_triggered_rules_add_up_to_the_highest_requirement() -> None:
    activation = variables({"amount": 7000}, result={"confidence": 0.5})
    fired = triggered(GOVERNANCE, activation)
    assert [t.rule.name for t in fired] == ["large", "unsure"]
    assert fired[0].reason == "approval rule 'large': 'input.amount > 5000.0' holds"
    need = requirement(fired)
    assert need is not None
    assert (need.rules, need.roles, need.quorum, need.separation_of_duties) == (
        ("large", "unsure"),
        frozenset({"approver"}),
        3,
        True,
    )
    assert need.satisfiable
    assert need.policies == (PolicyRef("claims", "claims", 1), PolicyRef("claims", "finance", 1))


def test_rules_read_step_outputs_and_vars() -> None:
    [rule] = combine(
        [rules("p", {"name": "flagged", "when": "steps.extract.output.fraud || vars.tier == 'gold'"})]
    ).approvals
    assert triggered([rule], variables({}, steps={"extract": {"fraud": False}}, vars={"tier": "gold"}))
    assert not triggered([rule], variables({}, steps={"extract": {"fraud": False}}, vars={"tier": "std"}))


def test_a_condition_that_cannot_be_evaluated_counts_as_triggered() -> None:
    [missing] = triggered(GOVERNANCE[1:], variables({"amount": 1}))  # no result yet: result.confidence fails
    assert missing.rule.name == "unsure"
    assert "could not be evaluated" in missing.reason
    [rule] = combine([rules("p", {"name": "odd", "when": "input.amount"})]).approvals
    [odd] = triggered([rule], variables({"amount": 3}))
    assert "not a boolean" in odd.reason


def test_rules_without_a_common_role_cannot_be_satisfied() -> None:
    policy = rules(
        "p",
        {"name": "a", "when": "true", "roles": ["admin"]},
        {"name": "b", "when": "true", "roles": ["approver"]},
    )
    need = requirement(triggered(combine([policy]).approvals, variables({})))
    assert need is not None
    assert not need.satisfiable


def test_a_rule_that_does_not_compile_raises() -> None:
    [rule] = combine([rules("p", {"name": "broken", "when": "input.amount >"})]).approvals
    with pytest.raises(ApprovalRuleError, match=re.escape("cannot compile CEL expression 'input.amount >'")):
        triggered([rule], variables({}))
