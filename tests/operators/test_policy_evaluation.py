"""The Policy operator's pure part: what a Policy selects, what is wrong with it, and the status it gets."""

from __future__ import annotations

from datetime import UTC, datetime

from crds.base import SecretKeyRef
from crds.policy import PolicySpec
from operators.policy.evaluation import Seen, fold, key_problem, key_users, problems, select

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NAMESPACE = [
    Seen("Workflow", "triage", {"team": "claims"}),
    Seen("Workflow", "fraud", {"team": "fraud"}),
    Seen("Model", "extractor", {"team": "claims"}),
    Seen("Connector", "sink", {"team": "claims", "tier": "gold"}),
    Seen("Connector", "audit", {"team": "claims"}),
]


def spec(**fields: object) -> PolicySpec:
    return PolicySpec.model_validate(fields)


def test_selection_by_kind_and_labels() -> None:
    everything = spec(selector={"kinds": ["Workflow", "Model", "Connector"], "matchLabels": {"team": "claims"}})
    assert select(everything, NAMESPACE) == {
        "Workflow": ["triage"],
        "Model": ["extractor"],
        "Connector": ["audit", "sink"],
    }
    assert select(spec(), NAMESPACE) == {"Workflow": ["fraud", "triage"], "Model": [], "Connector": []}


def test_a_selecting_policy_is_ready_with_counts_and_names() -> None:
    chosen = select(spec(selector={"kinds": ["Workflow", "Connector"], "matchLabels": {"team": "claims"}}), NAMESPACE)
    status = fold(None, generation=3, selected=chosen, problems=[], now=NOW)
    [ready] = status.conditions
    assert (ready.type, ready.status, ready.reason) == ("Ready", "True", "Selecting")
    assert ready.message == "selects 1 Workflow, 0 Models, 2 Connectors"
    assert (status.selected, status.observed_generation) == (3, 3)
    assert status.selection is not None
    assert (status.selection.workflows, status.selection.connectors) == (["triage"], ["audit", "sink"])
    nothing = fold(status, generation=4, selected=select(spec(selector={"kinds": ["Model"], "matchLabels": {"x": "y"}}),
                                                          NAMESPACE), problems=[], now=NOW)  # fmt: skip
    assert (nothing.conditions[0].reason, nothing.selected) == ("NothingSelected", 0)
    assert nothing.conditions[0].last_transition_time == NOW  # status stayed True


def test_an_approval_rule_that_does_not_compile_is_ready_false_naming_it() -> None:
    broken = spec(
        approvals=[{"name": "ok", "when": "input.amount > 10000"}, {"name": "large", "when": "input.amount >"}]
    )
    found = problems(broken)
    assert [(p.field, p.reason) for p in found] == [("spec.approvals[1].when", "CelCompileError")]
    assert found[0].message.startswith("approval rule 'large': cannot compile CEL expression 'input.amount >': ")
    status = fold(None, generation=1, selected=select(broken, NAMESPACE), problems=found, now=NOW)
    [ready] = status.conditions
    assert (ready.status, ready.reason) == ("False", "CelCompileError")
    assert "approval rule 'large'" in ready.message
    assert status.selected == 2  # what it would govern is still shown


def test_an_agent_action_rule_that_does_not_compile_is_reported() -> None:
    broken = spec(agentActions=[{"name": "big", "actions": ["refund"], "when": "arguments.amount >>"}])
    [found] = problems(broken)
    assert (found.field, found.reason) == ("spec.agentActions[0].when", "CelCompileError")
    assert found.message.startswith("agent action rule 'big': cannot compile CEL expression 'arguments.amount >>'")
    assert problems(spec(agentActions=[{"name": "ok", "when": "arguments.amount > 10"}])) == []


def test_only_hashing_or_tokenizing_with_kafka_sources_needs_the_key_in_the_namespace() -> None:
    sources = [
        *NAMESPACE,
        Seen("Connector", "intake", kafka_source=True),
        Seen("Connector", "billing", kafka_source=True),
    ]
    assert key_users(spec(pii={"action": "tokenize"}), sources) == ["billing", "intake"]
    assert key_users(spec(pii={"action": "hash"}), sources) == ["billing", "intake"]
    assert key_users(spec(pii={"action": "redact"}), sources) == []
    assert key_users(spec(), sources) == []
    # No kafkaSource here: the gateway and workers take their key from the release's namespace.
    assert key_users(spec(pii={"action": "tokenize"}), NAMESPACE) == []


def test_a_missing_key_is_secret_missing_naming_the_secret() -> None:
    tokenize = spec(pii={"action": "tokenize"})
    key = SecretKeyRef(name="aiplane-pii", key="key")
    missing = key_problem(tokenize, "claims", ["intake"], key, "secret")
    status = fold(None, generation=1, selected={}, problems=[missing], now=NOW)
    [ready] = status.conditions
    assert (ready.status, ready.reason) == ("False", "SecretMissing")
    assert "read from Secret 'aiplane-pii' (key 'key') in namespace claims: it does not exist" in ready.message
    assert "kafkaSource Connectors intake" in ready.message
    assert "it has no key 'key'" in key_problem(tokenize, "claims", ["intake"], key, "key").message
    assert key_problem(tokenize, "claims", ["intake"], key, "forbidden").reason == "SecretsForbidden"
