"""Promotion approvals: the rollout holds its last step until people decide, the analysis still rolls back while
it waits, and the engine's approvals stand behind it (``aiplane.promotions`` on a real SQLite store)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from aiplane.promotions import WORKFLOW, EngineApprovals, PolicyDemands, operator_store
from crds.model import Canary, Model, ModelStatus, Rollout, RolloutApproval
from crds.policy import Policy
from engine import Engine
from engine.errors import SeparationOfDutiesError
from operators.model import promotion
from operators.model import rollout as r
from operators.model.config import Config
from operators.model.kube import Kube
from operators.model.plan import Plan, plan
from operators.model.reconciler import Reconciler
from operators.model.rollout import Verdict
from operators.model.status import fold
from operators.policy.decisions import recording
from policies.sources import PolicySet

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GATED = Canary.model_validate(
    {
        "version": "2.0.0",
        "steps": [50, 100],
        "interval": "1m",
        "promotion": {"approval": {"roles": ["approver", "admin"], "quorum": 2, "expiry": "1h"}},
    }
)
PASS = Verdict(True, detail="fine")


def at(step: int, phase: str = "Progressing", **extra: object) -> Rollout:
    return Rollout.model_validate({"version": "2.0.0", "phase": phase, "step": step, "stepStartedAt": T0, **extra})


def approval(state: str = "pending", *decided_by: str, reason: str = "") -> RolloutApproval:
    return RolloutApproval(
        id="01APPROVAL",
        task_id="01TASK",
        tenant="claims",
        state=state,
        roles=["approver", "admin"],
        quorum=2,
        expires_at=T0 + timedelta(hours=1),
        decided_by=list(decided_by),
        reason=reason,
    )


def model(canary: Canary = GATED, rollout: Rollout | None = None) -> Model:
    return Model.model_validate(
        {
            "metadata": {"name": "claims-extractor", "namespace": "claims", "uid": "u-1", "generation": 3},
            "spec": {"bento": "service:Claims", "version": "1.0.0", "canary": canary.model_dump(by_alias=True)},
            "status": {"stableVersion": "1.0.0", "rollout": rollout.model_dump(by_alias=True, mode="json")}
            if rollout
            else None,
        }
    )


def test_the_last_step_waits_for_approval_instead_of_promoting() -> None:
    later = T0 + timedelta(minutes=1)
    decision = r.advance(GATED, at(1), now=later, canary_ready=True, verdict=PASS)
    assert decision.rollout.phase == "AwaitingApproval"
    assert r.weight(GATED, decision.rollout) == 100
    assert decision.event is not None
    assert decision.event.reason == "PromotionAwaitingApproval"
    # Without an approval block the same state promotes.
    ungated = GATED.model_copy(update={"promotion": None})
    assert r.advance(ungated, at(1), now=later, canary_ready=True, verdict=PASS).rollout.phase == "Promoted"


def test_waiting_names_who_may_approve_and_how() -> None:
    waiting = r.advance(GATED, at(1, "AwaitingApproval"), now=T0, canary_ready=True, approval=approval())
    assert waiting.rollout.phase == "AwaitingApproval"
    assert waiting.rollout.approval == approval()
    assert waiting.event is None
    message = waiting.rollout.message
    assert "2 approvals from role approver, admin in tenant claims" in message
    assert "aiplane approve 01APPROVAL" in message
    # Nothing new: nothing changes (no status write).
    again = r.advance(GATED, waiting.rollout, now=T0, canary_ready=True, approval=approval())
    assert again.rollout is waiting.rollout


def test_approval_promotes_and_rejection_or_expiry_rolls_back() -> None:
    waiting = at(1, "AwaitingApproval")
    approved = r.advance(GATED, waiting, now=T0, canary_ready=True, approval=approval("approved", "ann", "bob"))
    assert approved.rollout.phase == "Promoted"
    assert approved.event is not None
    assert approved.event.reason == "RolloutPromoted"
    assert "approved by ann, bob" in approved.event.message

    rejected = r.advance(
        GATED, waiting, now=T0, canary_ready=True, approval=approval("rejected", "bob", reason="too risky")
    )
    assert (rejected.rollout.phase, rejected.rollout.reason) == ("RolledBack", "PromotionRejected")
    assert r.weight(GATED, rejected.rollout) == 0
    assert rejected.event is not None
    assert rejected.event.reason == "PromotionRejected"
    assert rejected.event.type == "Warning"
    assert "rejected by bob: too risky" in rejected.rollout.message

    pending = approval()
    expired = promotion.effective(pending, T0 + timedelta(hours=1))
    assert promotion.effective(pending, T0 + timedelta(minutes=59)).state == "pending"
    assert expired.state == "expired"
    gone = r.advance(GATED, waiting, now=T0, canary_ready=True, approval=expired)
    assert gone.rollout.phase == "RolledBack"
    assert "expired" in gone.rollout.message


def test_a_failing_analysis_still_wins_while_waiting() -> None:
    failed = Verdict(False, metric="error-rate", value=0.5, threshold=0.1)
    decision = r.advance(
        GATED, at(1, "AwaitingApproval"), now=T0, canary_ready=True, verdict=failed, approval=approval()
    )
    assert (decision.rollout.phase, decision.rollout.reason) == ("RolledBack", "AnalysisFailed")
    assert decision.event is not None
    assert decision.event.reason == "RolloutRolledBack"
    assert "error-rate" in decision.rollout.message


def test_no_approvals_store_never_promotes_and_says_why() -> None:
    held = r.advance(GATED, at(1, "AwaitingApproval"), now=T0, canary_ready=True, approval="no store")
    assert held.rollout.phase == "AwaitingApproval"
    assert "cannot be asked for: no store" in held.rollout.message


def test_pause_and_abort_while_waiting() -> None:
    waiting = at(1, "AwaitingApproval", approval=approval().model_dump(by_alias=True, mode="json"))
    paused = r.advance(GATED, waiting, now=T0, canary_ready=True, control="pause")
    assert paused.rollout.phase == "Paused"
    resumed = r.advance(GATED, paused.rollout, now=T0, canary_ready=True, control="resume").rollout
    # Back at the last step: after the interval it waits again, for the same approval.
    again = r.advance(GATED, resumed, now=T0 + timedelta(minutes=1), canary_ready=True, verdict=PASS).rollout
    assert again.phase == "AwaitingApproval"
    assert again.approval == approval()
    aborted = r.advance(GATED, waiting, now=T0, canary_ready=True, control="abort")
    assert aborted.rollout.phase == "Aborted"


def test_request_defaults_the_tenant_to_the_namespace_and_keys_the_rollout() -> None:
    wanted = promotion.request(model(), "1.0.0")
    assert wanted is not None
    assert wanted.tenant == "claims"
    assert wanted.roles == ("approver", "admin")
    assert wanted.quorum == 2
    assert wanted.key == "model-promotion/u-1/2.0.0"
    assert "claims/claims-extractor to version 2.0.0 (replacing 1.0.0)" in wanted.prompt
    assert promotion.request(model(GATED.model_copy(update={"promotion": None})), "1.0.0") is None


def test_status_says_awaiting_approval_and_promotion_rejected() -> None:
    def conditions(rollout: Rollout) -> dict[str, tuple[str, str]]:
        m = model(rollout=rollout)
        planned = plan(m, "img", {}, now=T0, control="resume")
        status: ModelStatus = fold(m, generation=3, plan=planned, observed={}, urls={}, now=T0)
        return {c.type: (c.status, c.reason) for c in status.conditions}

    waiting = at(1, "AwaitingApproval", approval=approval().model_dump(by_alias=True, mode="json"))
    assert conditions(waiting)["Progressing"] == ("True", "AwaitingApproval")
    refused = at(
        1,
        "RolledBack",
        reason="PromotionRejected",
        approval=approval("rejected", "bob").model_dump(by_alias=True, mode="json"),
    )
    assert conditions(refused)["RolledBack"] == ("True", "PromotionRejected")
    assert conditions(at(1, "RolledBack"))["RolledBack"] == ("True", "AnalysisFailed")


def test_the_request_and_the_refusal_are_audited() -> None:
    records: list[tuple[str, str, str]] = []
    post = recording(lambda body, event: None, lambda kind, subject, decision, details: records.append(
        (kind, subject, decision)))  # fmt: skip
    body = {"metadata": {"namespace": "claims", "name": "claims-extractor", "generation": 3}}
    post(body, r.Event("Normal", "PromotionAwaitingApproval", "awaits"))
    post(body, r.Event("Warning", "PromotionRejected", "rejected by bob"))
    assert records == [
        ("model", "claims/claims-extractor", "approval-required"),
        ("model", "claims/claims-extractor", "rollback"),
    ]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """The engine's store as ``aiplane operator`` opens it, on SQLite and on PostgreSQL."""
    opened, _ = operator_store(db_url)
    yield opened
    opened.close()


def test_engine_approvals_open_once_decide_through_the_engine_and_withdraw(engine: Engine) -> None:
    approvals = EngineApprovals(engine)
    wanted = promotion.request(model(), "1.0.0")
    assert wanted is not None
    first = approvals.open(wanted)
    # An operator restarted before it wrote status asks again: the same approval.
    assert approvals.open(wanted) == first
    assert first.state == "pending"
    assert (first.tenant, first.roles, first.quorum) == ("claims", ["approver", "admin"], 2)
    task = engine.get("claims", first.task_id)
    assert (task.workflow, task.submitted_by) == (WORKFLOW, "aiplane-operator")
    assert [a.id for a in engine.approvals("claims").items] == [first.id]

    engine.approve(first.id, "ann", "metrics look fine", tenant="claims", roles={"approver"})
    assert approvals.look("claims", first.id).state == "pending"  # quorum 2
    engine.approve(first.id, "bob", "", tenant="claims", roles={"admin"})
    decided = approvals.look("claims", first.id)
    assert (decided.state, decided.decided_by) == ("approved", ["ann", "bob"])
    assert [r.decision for r in engine.audit.records() if r.kind == "approval"] == ["approve", "approve"]

    # A canary rolled back while its approval waited withdraws it.
    later = promotion.request(model(GATED.model_copy(update={"version": "3.0.0"})), "2.0.0")
    assert later is not None
    opened = approvals.open(later)
    approvals.withdraw(opened, "rolled back")
    assert approvals.look("claims", opened.id).state == "cancelled"
    approvals.withdraw(opened, "again")  # nothing pending: no error


def policy(name: str, rules: list[dict[str, object]], **selector: object) -> Policy:
    return Policy.model_validate(
        {
            "metadata": {"name": name, "namespace": "claims", "generation": 1},
            "spec": {"selector": {"kinds": ["Model", "Workflow"], **selector}, "approvals": rules},
        }
    )


def labelled(canary: Canary, **labels: str) -> Model:
    found = model(canary)
    found.metadata["labels"] = labels
    return found


UNGATED = GATED.model_copy(update={"promotion": None})


def test_policy_rules_that_read_model_demand_an_approval_and_task_rules_do_not() -> None:
    demands = PolicyDemands(
        PolicySet(
            [
                policy(
                    "critical",
                    [
                        {
                            "name": "critical-models",
                            "when": "model.labels.tier == 'critical'",
                            "roles": ["admin", "approver"],
                            "quorum": 2,
                        }
                    ],
                ),
                # The claims example's task rule: it selects the Model too, but says nothing about promotions.
                policy("claims", [{"name": "large-claim", "when": "steps.extract.output.amount > 10000.0"}]),
            ]
        )
    )
    assert demands(labelled(UNGATED, tier="standard"), "2.0.0", "1.0.0") is None
    demand = demands(labelled(UNGATED, tier="critical"), "2.0.0", "1.0.0")
    assert demand is not None
    assert (demand.rules, demand.roles, demand.quorum) == (("critical-models",), ("admin", "approver"), 2)

    # With no approval block in the spec, the Policy alone asks: its roles, its quorum, a day to decide.
    wanted = promotion.request(labelled(UNGATED, tier="critical"), "1.0.0", demand)
    assert wanted is not None
    assert (wanted.roles, wanted.quorum, wanted.expiry, wanted.rules) == (("admin", "approver"), 2, "24h", demand.rules)
    assert "critical-models" in wanted.prompt
    # Stable version and canary version are there to be read, and a rule that cannot be evaluated holds (fail closed).
    versions = PolicyDemands(PolicySet([policy("v", [{"name": "majors", "when": "model.version.startsWith('3.')"}])]))
    assert versions(model(UNGATED), "3.0.0", "2.0.0") is not None
    assert versions(model(UNGATED), "2.1.0", "2.0.0") is None
    broken = PolicyDemands(PolicySet([policy("b", [{"name": "typo", "when": "model.lables.tier == 'x'"}])]))
    assert broken(model(UNGATED), "2.0.0", "1.0.0") is not None


def test_spec_and_policy_add_up_to_the_stricter_requirement() -> None:
    demand = promotion.Demand(rules=("critical-models",), roles=("admin",), quorum=1)
    both = promotion.request(model(), "1.0.0", demand)  # the spec: approver or admin, quorum 2, 1h
    assert both is not None
    assert (both.roles, both.quorum, both.expiry, both.users) == (("admin",), 2, "1h", ())
    none = promotion.request(model(), "1.0.0", promotion.Demand(rules=("x",), roles=("auditor",), quorum=1))
    assert none is not None
    assert none.roles == ()  # nobody could approve: the rollout holds and says so (see the reconciler)


def test_the_rollout_waits_when_only_a_policy_asks_and_promotes_when_nothing_asks_any_more() -> None:
    later = T0 + timedelta(minutes=1)
    held = r.advance(UNGATED, at(1), now=later, canary_ready=True, verdict=PASS, approval_required=True)
    assert held.rollout.phase == "AwaitingApproval"
    released = r.advance(UNGATED, held.rollout, now=later, canary_ready=True, approval_required=False)
    assert released.rollout.phase == "Promoted"


def test_a_rollout_that_stops_waiting_withdraws_its_approval_once(engine: Engine) -> None:
    approvals = EngineApprovals(engine)
    reconciler = Reconciler(
        kube=cast(Kube, None), config=Config(), post_event=lambda body, event: None, approvals=approvals
    )
    wanted = promotion.request(model(), "1.0.0")
    assert wanted is not None
    opened = approvals.open(wanted)
    waiting = at(1, "AwaitingApproval", approval=opened.model_dump(by_alias=True, mode="json"))
    gated = model(rollout=waiting)
    assert gated.status is not None

    def planned(m: Model, **kw: object) -> Plan:
        return plan(m, "img", {}, now=T0, **kw)  # type: ignore[arg-type]

    # Still waiting: nothing withdrawn.
    kept = asyncio.run(reconciler._withdraw(gated.status, planned(gated, control="resume", approval=opened)))
    assert kept.rollout is not None
    assert kept.rollout.approval == opened
    assert approvals.look("claims", opened.id).state == "pending"

    # The analysis rolls the canary back while it waits: the approval is cancelled, and status says so.
    failed = Verdict(False, metric="error-rate", value=0.5, threshold=0.1)
    rolled = asyncio.run(reconciler._withdraw(gated.status, planned(gated, control="resume", verdict=failed)))
    assert rolled.rollout is not None
    assert (rolled.rollout.phase, rolled.rollout.reason) == ("RolledBack", "AnalysisFailed")
    assert rolled.rollout.approval is not None
    assert rolled.rollout.approval.state == "cancelled"
    assert approvals.look("claims", opened.id).state == "cancelled"
    assert engine.get("claims", opened.task_id).state == "cancelled"


def test_a_promoted_rollout_keeps_its_approval_as_decided(engine: Engine) -> None:
    approvals = EngineApprovals(engine)
    reconciler = Reconciler(
        kube=cast(Kube, None), config=Config(), post_event=lambda body, event: None, approvals=approvals
    )
    wanted = promotion.request(model(), "1.0.0")
    assert wanted is not None
    opened = approvals.open(wanted)
    gated = model(rollout=at(1, "AwaitingApproval", approval=opened.model_dump(by_alias=True, mode="json")))
    assert gated.status is not None
    engine.approve(opened.id, "ann", "", tenant="claims", roles={"approver"})
    engine.approve(opened.id, "bob", "", tenant="claims", roles={"admin"})
    decided = approvals.look("claims", opened.id)
    promoted = plan(gated, "img", {}, now=T0, control="resume", approval=decided)
    assert promoted.rollout is not None
    assert promoted.rollout.phase == "Promoted"
    kept = asyncio.run(reconciler._withdraw(gated.status, promoted))
    assert kept.rollout is not None
    assert kept.rollout.approval == decided
    assert engine.get("claims", opened.task_id).state == "succeeded"


def test_the_requester_of_a_promotion_may_not_approve_it_when_a_policy_says_so(engine: Engine) -> None:
    """Separation of duties for promotions: the Model names who asked for the canary (aiplane.io/requested-by, which
    the chart's admission policy keeps honest), the task is theirs, and a Policy rule with separationOfDuties makes
    the engine refuse their own approval (audited), while another approver's counts."""
    rule = {"name": "four-eyes", "when": "model.labels.tier == 'critical'", "roles": ["approver"], "quorum": 1}
    asked = labelled(UNGATED, tier="critical")
    asked.metadata["annotations"] = {promotion.REQUESTED_BY: "sam"}
    approvals = EngineApprovals(engine)

    demand = PolicyDemands(PolicySet([policy("critical", [rule])]))(asked, "2.0.0", "1.0.0")
    assert demand is not None
    assert demand.separation_of_duties  # the field's default on an approval rule
    wanted = promotion.request(asked, "1.0.0", demand)
    assert wanted is not None
    assert (wanted.requested_by, wanted.separation_of_duties) == ("sam", True)
    opened = approvals.open(wanted)
    assert engine.get("claims", opened.task_id).submitted_by == "sam"

    with pytest.raises(SeparationOfDutiesError) as refused:
        engine.approve(opened.id, "sam", "my own canary is fine", tenant="claims", roles={"approver"})
    assert refused.value.http_status == 403
    assert "separation of duties" in refused.value.detail
    assert approvals.look("claims", opened.id).state == "pending"
    [denial] = [r for r in engine.audit.records() if r.decision == "deny"]
    assert (denial.kind, denial.subject, denial.actor) == ("policy", f"task/{opened.task_id}", "sam")
    # Another approver approves.
    engine.approve(opened.id, "ann", "reviewed", tenant="claims", roles={"approver"})
    assert approvals.look("claims", opened.id).state == "approved"

    # A rule that waives it: the requester may approve their own promotion.
    waived = PolicyDemands(PolicySet([policy("critical", [{**rule, "separationOfDuties": False}])]))
    later = labelled(UNGATED.model_copy(update={"version": "3.0.0"}), tier="critical")
    later.metadata["annotations"] = {promotion.REQUESTED_BY: "sam"}
    own = promotion.request(later, "2.0.0", waived(later, "3.0.0", "2.0.0"))
    assert own is not None
    assert not own.separation_of_duties
    decided = approvals.open(own)
    engine.approve(decided.id, "sam", "", tenant="claims", roles={"approver"})
    assert approvals.look("claims", decided.id).state == "approved"
