"""Agent action rules (``policies.agents``): deny wins, allow rules form an allow-list, ``when`` fails closed."""

from __future__ import annotations

from typing import Any

from crds.policy import AgentActionRule
from policies.agents import Proposed, decide
from policies.effective import EffectiveAgentRule, PolicyRef


def rule(name: str, policy: str = "guard", **spec: Any) -> EffectiveAgentRule:
    return EffectiveAgentRule(AgentActionRule.model_validate({"name": name, **spec}), PolicyRef("claims", policy))


def proposed(action: str = "mail", target: str = "connector/mail", **extra: Any) -> Proposed:
    return Proposed(action=action, target=target, tenant=extra.pop("tenant", "acme"), **extra)


def test_no_rules_allow_everything() -> None:
    assert decide([], proposed()).allowed


def test_a_deny_matches_by_name_target_or_star_and_wins_over_allows() -> None:
    allow = rule("all", effect="allow")
    for actions in (["mail"], ["connector/mail"], ["*"]):
        verdict = decide([allow, rule("no-mail", policy="strict", actions=actions)], proposed())
        assert not verdict.allowed
        assert verdict.rule == "claims/strict/no-mail"
        assert verdict.policies == (PolicyRef("claims", "strict"),)


def test_tenants_and_data_classes_narrow_a_rule() -> None:
    deny = rule("no-pii-mail", actions=["mail"], tenants=["acme"], dataClasses=["pii"])
    assert not decide([deny], proposed(data_class="pii")).allowed
    assert decide([deny], proposed(data_class="claims")).allowed
    assert decide([deny], proposed()).allowed  # no data class: a rule that names classes does not match
    assert decide([deny], proposed(tenant="globex", data_class="pii")).allowed


def test_allow_rules_form_an_allow_list() -> None:
    allow = rule("extract-only", effect="allow", actions=["model/extractor"])
    assert decide([allow], proposed("extract", "model/extractor")).allowed
    verdict = decide([allow], proposed())
    assert not verdict.allowed
    assert "no agent action rule allows it for tenant 'acme'" in verdict.reason
    assert "claims/guard/extract-only" in verdict.reason


def test_when_is_evaluated_over_the_arguments_and_fails_closed() -> None:
    big = rule("big-refunds", actions=["refund"], when="arguments.amount > 1000")
    assert not decide([big], proposed("refund", "workflow/refund", arguments={"amount": 5000})).allowed
    assert decide([big], proposed("refund", "workflow/refund", arguments={"amount": 10})).allowed
    # A field the rule reads is missing: a deny counts as matched, an allow as not.
    verdict = decide([big], proposed("refund", "workflow/refund", arguments={}))
    assert not verdict.allowed
    assert "could not be evaluated" in verdict.reason
    allow = rule("small", effect="allow", when="arguments.amount < 100")
    assert not decide([allow], proposed(arguments={})).allowed
