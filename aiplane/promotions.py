"""Promotion approvals of the Model operator, as tasks of the engine's built-in promotion workflow.

A canary whose ``spec.canary.promotion.approval`` asks for people gets one task of the workflow
``aiplane-model-promotion``, whose only step is an approval with the Model's roles, users, quorum and expiry. So
people decide it like any other approval (``aiplane approvals``, ``aiplane approve``, ``/v1/approvals``, the
gateway's role checks), the engine audits each decision, and the operator reads the outcome back through
``operators.model.promotion.Approvals``. The task is submitted as the user who requested the change (the Model's
``aiplane.io/requested-by``), and when a Policy's rule asks for separation of duties the approval step says so,
so the engine refuses that user's own approval. The task's idempotency key is the rollout's (Model
uid and canary version), so asking twice, after an operator restart for instance, finds the first approval.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterable
from typing import Any

import kubernetes

from crds.model import Model, RolloutApproval
from crds.workflow import WorkflowSpec
from engine import Approval, Engine, InvalidStateError, Submission
from operators.model.promotion import Demand, Request
from policies.approvals import requirement, triggered
from policies.effective import EffectiveApproval, Target
from policies.sources import PolicySet
from policies.sources_kube import KubePolicyWatch

WORKFLOW = "aiplane-model-promotion"
STEP = "approve-promotion"
ACTOR = "aiplane-operator"


def workflow(request: Request) -> WorkflowSpec:
    """The promotion workflow for ``request``'s approvers: one approval step. Each set of approvers is a version
    of the same workflow (versions are content hashes, so the same approvers give the same version)."""
    return WorkflowSpec.model_validate(
        {
            "steps": [
                {
                    "name": STEP,
                    "type": "approval",
                    "approval": {
                        "approvers": {"roles": list(request.roles), "users": list(request.users)},
                        "quorum": request.quorum,
                        "prompt": request.prompt,
                        "expiry": request.expiry,
                        "separationOfDuties": request.separation_of_duties,
                    },
                }
            ]
        }
    )


def seen(approval: Approval) -> RolloutApproval:
    """What the Model's status keeps of an engine approval."""
    decisions = approval.decisions
    return RolloutApproval(
        id=approval.id,
        task_id=approval.task_id,
        tenant=approval.tenant,
        state=approval.state.value,
        roles=list(approval.roles),
        users=list(approval.users),
        quorum=approval.quorum,
        expires_at=approval.expires_at,
        decided_by=[d.approver for d in decisions][-16:],
        reason=decisions[-1].reason if decisions else "",
    )


class EngineApprovals:
    """``operators.model.promotion.Approvals`` on an engine's store (the one the gateway and workers share)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def open(self, request: Request) -> RolloutApproval:
        version = self.engine.register_workflow(WORKFLOW, workflow(request))
        submission = Submission(
            tenant=request.tenant,
            workflow=WORKFLOW,
            input=request.input(),
            version=version,
            idempotency_key=request.key,
            # The task is the requester's: the engine keeps them from approving it under separation of duties.
            submitted_by=request.requested_by or ACTOR,
            annotations=None,
        )
        [outcome] = self.engine.submit_many([submission])
        if isinstance(outcome, Exception):
            raise outcome
        task: Any = getattr(outcome, "task", None)
        if task is None:
            raise RuntimeError(f"the engine answered {type(outcome).__name__} for a promotion approval")
        page = self.engine.approvals(request.tenant, None, task_id=task.id)
        if not page.items:
            raise RuntimeError(f"task {task.id} of {WORKFLOW} holds no approval (state {task.state})")
        return seen(page.items[0])

    def look(self, tenant: str, approval_id: str) -> RolloutApproval:
        return seen(self.engine.approval(approval_id, tenant=tenant))

    def withdraw(self, approval: RolloutApproval, reason: str) -> RolloutApproval:
        # Decided or expired meanwhile: nothing is pending any more, and the approval says how it ended.
        with contextlib.suppress(InvalidStateError):
            self.engine.cancel(approval.tenant, approval.task_id, reason=reason[:1000] or "rollout ended")
        return self.look(approval.tenant, approval.id)


def operator_store(url: str) -> tuple[Engine, EngineApprovals]:
    """The engine's store as ``aiplane operator`` uses it: the audit log (rollout decisions) and approvals
    (promotions)."""
    engine = Engine(url)
    return engine, EngineApprovals(engine)


# A rule governs promotions when its condition reads ``model``: the claims example's Policy selects its Model for
# residency and masking, and its task rule (``steps.extract.output...``) must not hold every canary for people.
_READS_MODEL = re.compile(r"(?<![\w.])model\b")


def promotion_rules(rules: Iterable[EffectiveApproval]) -> list[EffectiveApproval]:
    """The approval rules that speak about Model promotions, with only their conditions that do."""
    found = []
    for rule in rules:
        conditions = tuple(w for w in rule.when if _READS_MODEL.search(w))
        if conditions:
            found.append(dataclasses.replace(rule, when=conditions))
    return found


def promotion_variables(model: Model, version: str, stable: str) -> dict[str, Any]:
    """The CEL variables of a promotion: ``model`` with the Model's name, namespace, labels, region, the canary
    ``version`` and the ``stable`` one it would replace."""
    meta = model.metadata
    return {
        "model": {
            "name": str(meta.get("name") or ""),
            "namespace": str(meta.get("namespace") or ""),
            "labels": dict(meta.get("labels") or {}),
            "region": model.spec.region or "",
            "version": version,
            "stable": stable,
        }
    }


class PolicyDemands:
    """``operators.model.promotion.Demands`` from Policies: those selecting the Model (kind Model, its labels,
    its namespace) whose approval rules read ``model`` and hold (fail closed, as for tasks) demand an approval."""

    def __init__(self, policies: PolicySet) -> None:
        self.policies = policies

    def __call__(self, model: Model, version: str, stable: str) -> Demand | None:
        meta = model.metadata
        target = Target(
            kind="Model",
            name=str(meta.get("name") or ""),
            namespace=str(meta.get("namespace") or ""),
            labels=dict(meta.get("labels") or {}),
        )
        rules = promotion_rules(self.policies.effective(target).approvals)
        if not rules:
            return None
        needed = requirement(triggered(rules, promotion_variables(model, version, stable)))
        if needed is None:
            return None
        return Demand(
            rules=needed.rules,
            roles=tuple(sorted(needed.roles)),
            quorum=needed.quorum,
            reasons=needed.reasons,
            separation_of_duties=needed.separation_of_duties,
        )


def policy_demands(client: kubernetes.client.ApiClient) -> PolicyDemands:
    """Demands from every namespace's Policies, kept current by a watch (a daemon thread)."""
    return PolicyDemands(KubePolicyWatch(client).start().policies)
