"""Policy decisions as Prometheus metrics, counted where each Policy is enforced: rate limits, masking and the
intake's admission (tenant access, residency) here; approval rules and residency at call time in the engine
(tests/engine/test_policy_decision_metrics.py)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from crds.policy import PII, Policy
from crds.workflow import WorkflowSpec
from policies.admission import Admission
from policies.masking import WorkflowMasking
from policies.ratelimit import RateLimiter
from policies.residency import Residency


def _decisions(check: str, decision: str) -> float:
    labels = {"check": check, "decision": decision}
    return REGISTRY.get_sample_value("aiplane_policy_decisions_total", labels) or 0.0


def _masked(entity: str, action: str) -> float:
    labels = {"entity": entity, "action": action}
    return REGISTRY.get_sample_value("aiplane_policy_masked_values_total", labels) or 0.0


def test_a_rate_limit_refusal_is_a_deny() -> None:
    limited = Policy.model_validate(
        {
            "metadata": {"name": "slow", "namespace": "default"},
            "spec": {"rateLimits": [{"requestsPerSecond": 1, "burst": 1}]},
        }
    )
    limiter = RateLimiter.from_policies([limited])
    limiter.clock = lambda: 100.0  # no refill between the calls
    before = _decisions("rate_limit", "deny")
    answers = [limiter.take("acme", "normal") for _ in range(3)]
    assert [answer is None for answer in answers] == [True, False, False]
    assert _decisions("rate_limit", "deny") - before == 2


def test_masked_values_are_counted_by_entity_and_action() -> None:
    masking = WorkflowMasking(lambda workflow: PII(entities=["EMAIL_ADDRESS", "PHONE_NUMBER"]))
    before = _masked("EMAIL_ADDRESS", "redact")
    value = {"email": "ann@example.com", "cc": ["bob@example.org"], "note": "no personal data here"}
    masked = masking.input("acme", "claims", value)
    assert "ann@example.com" not in str(masked)
    assert _masked("EMAIL_ADDRESS", "redact") - before == 2
    # Masking again what is masked already changes nothing and counts nothing.
    masking.input("acme", "claims", masked)
    assert _masked("EMAIL_ADDRESS", "redact") - before == 2


def test_admission_refusals_are_denies_by_check() -> None:
    pinned = Policy.model_validate(
        {
            "metadata": {"name": "eu-only", "namespace": "claims"},
            "spec": {"selector": {"matchLabels": {"data": "pii"}}, "residency": {"regions": ["eu-west"]}},
        }
    )
    residency = Residency.from_manifests([pinned], {"claims-eu": ("claims", {"data": "pii"})}, {"triage": "us-east"})
    admission = Admission(tenants=lambda workflow: frozenset({"acme"}), residency=residency)
    spec = WorkflowSpec.model_validate({"steps": [{"name": "call", "type": "model", "model": {"name": "triage"}}]})
    access, region = _decisions("access", "deny"), _decisions("residency", "deny")

    assert admission.check("acme", "claims-eu", spec) is not None  # the tenant may, the region may not
    assert admission.check("globex", "claims-eu", spec) is not None  # the tenant may not
    assert (_decisions("access", "deny") - access, _decisions("residency", "deny") - region) == (1, 1)
    assert admission.check("acme", "open", spec) is None
    assert (_decisions("access", "deny") - access, _decisions("residency", "deny") - region) == (1, 1)
