"""Selection and combination of Policies: which govern a target, and what they say together (deny wins)."""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from aiplane import manifests
from crds.policy import Policy
from policies.access import RoleGrants
from policies.effective import (
    EffectivePolicy,
    Limit,
    PolicyRef,
    Target,
    applicable,
    combine,
    effective,
    parse_duration,
    selects,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "claims-triage"


def policy(name: str, namespace: str = "default", labels: dict[str, str] | None = None, **spec: Any) -> Policy:
    spec.setdefault("selector", {"kinds": ["Workflow", "Model", "Connector"], "matchLabels": labels or {}})
    return Policy.model_validate({"metadata": {"name": name, "namespace": namespace, "generation": 1}, "spec": spec})


CLAIMS = Target("Workflow", "claims-triage", "default", {"team": "claims", "tier": "gold"})


def test_selection_by_kind_namespace_and_labels() -> None:
    assert selects(policy("all"), CLAIMS)
    assert selects(policy("team", labels={"team": "claims"}), CLAIMS)
    assert not selects(policy("other-team", labels={"team": "fraud"}), CLAIMS)
    assert not selects(policy("one-more-label", labels={"team": "claims", "pii": "yes"}), CLAIMS)
    assert not selects(policy("elsewhere", namespace="prod"), CLAIMS)
    models_only = policy("models", selector={"kinds": ["Model"]})
    assert not selects(models_only, CLAIMS)
    assert selects(models_only, Target("Model", "claims-model", "default"))
    # A policy without a namespace (from a file) lives in "default", like the targets of the embedded mode.
    unplaced = Policy.model_validate({"metadata": {"name": "file"}, "spec": {}})
    assert selects(unplaced, Target("Workflow", "w"))
    assert [p.metadata["name"] for p in applicable([policy("b"), policy("a"), policy("x", "prod")], CLAIMS)] == [
        "a",
        "b",
    ]


def test_no_policy_means_ungoverned() -> None:
    result = effective([policy("elsewhere", namespace="prod", residency={"regions": ["eu-west"]})], CLAIMS)
    assert result == EffectivePolicy()
    assert result.allows_tenant("anyone").allowed
    assert result.allows_region("us-east").allowed


def test_access_deny_wins() -> None:
    result = combine(
        [
            policy(
                "a", access={"tenants": ["acme", "globex"], "roles": [{"role": "approver", "subjects": ["al", "bo"]}]}
            ),
            policy("b", access={"tenants": ["acme"], "roles": [{"role": "approver", "subjects": ["bo", "cy"]}]}),
            policy("c", access={"roles": [{"role": "auditor", "subjects": ["di"]}]}),  # no tenant list: no limit
        ]
    )
    assert result.tenants == frozenset({"acme"})
    assert result.allows_tenant("acme").allowed
    refused = result.allows_tenant("globex")
    assert not refused.allowed
    assert "globex" in refused.reason
    assert [str(r) for r in refused.policies] == ["default/a@1", "default/b@1", "default/c@1"]


def test_role_bindings_add_up_per_tenant_whatever_the_policies_select() -> None:
    """Role bindings are grants, as Kubernetes RoleBindings are: every Policy's add to the others' and to the
    credential's own, in the tenants that Policy lists (every tenant when it lists none)."""
    grants = RoleGrants.from_policies(
        [
            policy("a", access={"tenants": ["acme", "globex"], "roles": [{"role": "approver", "subjects": ["al"]}]}),
            policy("b", access={"tenants": ["acme"], "roles": [{"role": "approver", "subjects": ["bo", "leads"]}]}),
            policy("c", labels={"team": "fraud"}, access={"roles": [{"role": "auditor", "subjects": ["di", "bo"]}]}),
            policy("d", residency={"regions": ["eu-west"]}),
        ]
    )
    assert grants.roles_for("acme", "al") == {"approver"}
    assert grants.roles_for("acme", "bo") == {"approver", "auditor"}  # a second Policy adds, never narrows
    assert grants.roles_for("acme", "cy", ["leads"]) == {"approver"}  # by group
    assert grants.roles_for("globex", "bo") == {"auditor"}  # b grants in acme only
    assert grants.roles_for("initech", "al") == frozenset()
    assert not RoleGrants.from_policies([policy("d", residency={"regions": ["eu-west"]})])


def test_residency_intersects_and_an_empty_intersection_allows_nothing() -> None:
    result = combine(
        [policy("a", residency={"regions": ["eu-west", "eu-central"]}), policy("b", residency={"regions": ["eu-west"]})]
    )
    assert result.regions == frozenset({"eu-west"})
    assert result.allows_region("eu-west").allowed
    denied = result.allows_region("us-east")
    assert not denied.allowed
    assert denied.reason == "region 'us-east' is outside the allowed regions: eu-west"
    assert not result.allows_region(None).allowed
    disjoint = combine([policy("a", residency={"regions": ["eu-west"]}), policy("b", residency={"regions": ["us"]})])
    assert disjoint.regions == frozenset()
    assert "do not overlap" in disjoint.allows_region("eu-west").reason


def test_pii_union_of_masks_and_strictest_action() -> None:
    result = combine(
        [
            policy("a", pii={"entities": ["EMAIL_ADDRESS"], "fields": ["input.name"], "action": "tokenize",
                             "unmaskRoles": ["auditor", "admin"]}),
            policy("b", pii={"entities": ["US_SSN"], "fields": ["input.ssn"], "action": "tokenize",
                             "unmaskRoles": ["auditor"]}),
        ]
    )  # fmt: skip
    assert result.pii is not None
    assert result.pii.entities == {"EMAIL_ADDRESS", "US_SSN"}
    assert result.pii.fields == ("input.name", "input.ssn")
    assert (result.pii.action, result.pii.unmask_roles) == ("tokenize", frozenset({"auditor"}))
    hashed = combine(
        [policy("a", pii={"action": "tokenize", "unmaskRoles": ["auditor"]}), policy("b", pii={"action": "hash"})]
    )
    assert hashed.pii is not None
    assert (hashed.pii.action, hashed.pii.unmask_roles) == ("hash", frozenset())
    redacted = combine([policy("a", pii={"action": "hash"}), policy("b", pii={"action": "redact"})])
    assert redacted.pii is not None
    assert redacted.pii.action == "redact"


def test_retention_shortest_wins_but_audit_is_kept_longest() -> None:
    result = combine(
        [
            policy("a", retention={"inputs": "90d", "results": "365d", "audit": "3650d"}),
            policy("b", retention={"inputs": "30d", "events": "12h", "audit": "2555d"}),
        ]
    )
    assert result.retention == {
        "inputs": timedelta(days=30),
        "results": timedelta(days=365),
        "events": timedelta(hours=12),
        "audit": timedelta(days=3650),
    }


def test_approvals_keep_every_rule_and_merge_same_names_to_the_highest_requirement() -> None:
    result = combine(
        [
            policy("a", approvals=[{"name": "large", "when": "input.amount > 10000", "roles": ["approver", "admin"]},
                                   {"name": "low-confidence", "when": "result.confidence < 0.8"}]),
            policy("b", approvals=[{"name": "large", "when": "input.amount > 5000", "roles": ["approver"],
                                    "quorum": 2, "separationOfDuties": False}]),
        ]
    )  # fmt: skip
    large, low = result.approvals
    assert (large.name, large.when, large.roles, large.quorum) == (
        "large",
        ("input.amount > 10000", "input.amount > 5000"),
        frozenset({"approver"}),
        2,
    )
    assert large.separation_of_duties
    assert large.sources == (PolicyRef("default", "a", 1), PolicyRef("default", "b", 1))
    assert (low.name, low.quorum, low.roles) == ("low-confidence", 1, frozenset({"approver"}))
    assert result.conflicts == ()
    clash = combine(
        [
            policy("a", approvals=[{"name": "r", "when": "true", "roles": ["admin"]}]),
            policy("b", approvals=[{"name": "r", "when": "true", "roles": ["approver"]}]),
        ]
    )
    assert clash.conflicts == (
        "approval rule 'r' has no role every policy accepts: default/a@1 (admin), default/b@1 (approver)",
    )


def test_rate_limits_and_sampling_take_the_strictest() -> None:
    result = combine(
        [
            policy("a", rateLimits=[{"requestsPerSecond": 50, "burst": 100},
                                    {"priority": "high", "requestsPerSecond": 5}],
                   payloadLogging={"sampleRate": 0.1}),
            policy("b", rateLimits=[{"requestsPerSecond": 80, "burst": 20}], payloadLogging={"sampleRate": 0.01}),
        ]
    )  # fmt: skip
    assert result.rate_limits == {"*": Limit(50, 20), "high": Limit(5, 10)}
    assert result.payload_sample_rate == 0.01


def test_the_result_does_not_depend_on_the_order_of_the_policies() -> None:
    parts = [
        policy("a", access={"tenants": ["acme", "globex"]}, retention={"inputs": "1d"}, pii={"action": "tokenize"}),
        policy("b", residency={"regions": ["eu", "us"]}, approvals=[{"name": "x", "when": "true", "quorum": 3}]),
        policy("c", access={"tenants": ["acme"]}, pii={"action": "hash", "fields": ["input.z"]},
               residency={"regions": ["us"]}, rateLimits=[{"requestsPerSecond": 1}]),
    ]  # fmt: skip
    results = [combine(order) for order in itertools.permutations(parts)]
    first = combine(parts)
    assert all(r == first for r in results)
    assert len({r.fingerprint for r in results}) == 1
    renewed = [policy("a", access={"tenants": ["acme", "globex"]}), *parts[1:]]
    renewed[0].metadata["generation"] = 2
    assert combine(renewed).fingerprint != first.fingerprint


def test_the_claims_example_governs_its_workflow_model_and_connectors() -> None:
    resources = manifests.load([EXAMPLE])
    policies = [r for r in resources if isinstance(r, Policy)]
    labels = {"app.kubernetes.io/part-of": "claims-triage"}
    for kind in ("Workflow", "Model", "Connector"):
        result = effective(policies, Target(kind, "x", "default", labels))
        assert [s.name for s in result.sources] == ["claims-governance"]
        assert result.regions == frozenset({"eu-west"})
        assert result.pii is not None
        assert result.pii.action == "tokenize"
        assert [a.name for a in result.approvals] == ["large-claim"]
        assert result.retention["audit"] == timedelta(days=3650)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90d", timedelta(days=90)), ("1h30m", timedelta(minutes=90)), ("500ms", timedelta(milliseconds=500)),
     ("1.5s", timedelta(seconds=1.5))],
)  # fmt: skip
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "d", "10", "10x", "1h 30m", "h1"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
