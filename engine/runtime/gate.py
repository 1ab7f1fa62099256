"""The approval gate: Policies' approval rules, checked where a task would succeed, park it on a human approval.

``StateMachine`` holds a gate only when some Policy has approval rules (``StateMachine.gate`` None costs one
attribute test per finished task, nothing per step). Where a task would finish successfully the machine asks
``ApprovalGate.check``; when a rule triggers it keeps the task's result on the task row, enters the synthetic
step ``policy-approval`` (a waiting step run and a pending approval with the requirement's roles and quorum) and
finishes the task only when that approval is approved. A requirement nobody can satisfy (the triggered rules
share no role) fails the task with ``ApprovalUnsatisfiable`` instead of parking it forever.

A submitter may ask for more, never for less: a task submitted with ``policy.approval: required`` (its
annotations) is parked on the same step where it would succeed when no human approved anything of it yet (for the
``approver`` role, ``SUBMITTER_REQUIREMENT``), and a Policy approval it triggers asks a human itself even where the
workflow's own approval step would satisfy it. ``skip-if-allowed`` changes nothing: no Policy construct allows
skipping an approval, so no annotation can bypass a human gate. The gate runs for such a task even where no Policy
has approval rules.

Which rules apply to a workflow is the wiring's business, as for PII masking and residency: ``rules_for(name)``
gives the effective approval rules of the workflow of that name, e.g.
``lambda name: policy_set.effective(targets.get(name) or Target("Workflow", name)).approvals`` where ``targets``
maps each workflow to its namespace and labels (from the manifests embedded, from the Workflow resources in a
cluster; a workflow nobody described is taken to be in ``default`` with no labels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa

from crds.base import Role
from crds.workflow import Approval, Approvers, Step, WorkflowSpec
from engine.models import ApprovalState, StepState
from engine.payloads import PayloadCodec
from engine.store import audit
from engine.store.database import after_commit
from engine.store.schema import approvals, step_runs
from policies import metrics as policy_metrics
from policies.approvals import Requirement, requirement, triggered, variables
from policies.audit import Entry
from policies.effective import EffectiveApproval

#: The name of the step a Policy approval waits in (the approval's ``step``, the step run's name).
POLICY_APPROVAL_STEP = "policy-approval"
#: Policies' approval rules carry no expiry; a week, after which the task fails as an unanswered approval does.
DEFAULT_EXPIRY = timedelta(days=7)

RulesFor = Callable[[str], Sequence[EffectiveApproval]]
#: The ``policy.approval`` annotation by which a submitter asks for a human approval in any case.
ASK_HUMAN = "required"
#: What such a task waits for when no rule asked for more: one member of the tenant's approvers.
SUBMITTER_REQUIREMENT = Requirement(
    rules=(),
    roles=frozenset({"approver"}),
    quorum=1,
    separation_of_duties=False,
    reasons=("the submitter asked for a human approval (policy.approval: required)",),
    policies=(),
)


def asks_human(task: sa.Row[Any]) -> bool:
    """Whether the task's submitter asked for a human approval in any case (``policy.approval: required``)."""
    annotations = task.annotations
    return isinstance(annotations, dict) and annotations.get("approval") == ASK_HUMAN


def _no_rules(_workflow: str) -> Sequence[EffectiveApproval]:
    return ()


class ApprovalGate:
    def __init__(self, rules_for: RulesFor, *, expiry: timedelta = DEFAULT_EXPIRY) -> None:
        self.rules_for = rules_for
        self.expiry = expiry

    def check(
        self,
        conn: sa.Connection,
        codec: PayloadCodec,
        task: sa.Row[Any],
        *,
        result: Any,
        vars: dict[str, Any],
        now: datetime,
    ) -> Requirement | None:
        """The approval this task needs before it may succeed with ``result``; None when no rule triggers, or when
        an approval step of the workflow already gave what the rules require (``satisfied_by``)."""
        asks = asks_human(task)
        rules = self.rules_for(task.workflow)
        if not rules:
            return SUBMITTER_REQUIREMENT if asks and not _approved(conn, task.id) else None
        expressions = " ".join(expression for rule in rules for expression in rule.when)
        outputs = _step_outputs(conn, codec, task.id) if "steps" in expressions else {}
        task_input = codec.decode(task.input, task.input_ref) if "input" in expressions else None
        activation = variables(task_input, result=result, steps=outputs, vars=vars)
        required = requirement(triggered(rules, activation))
        if required is None:
            return SUBMITTER_REQUIREMENT if asks and not _approved(conn, task.id) else None
        if not required.satisfiable or asks:  # asked for a human: the Policy approval asks one itself
            return required
        by = satisfied_by(conn, task.id, required)
        if by is None:
            return required
        record(conn, task, required, "satisfied", now, by=by)
        return None

    def step(self, required: Requirement) -> Step:
        """The synthetic approval step a task parks in for ``required``: entered like any approval step
        (``StateMachine.entry``), so its step run and approval rows are the same as a workflow's own."""
        # Built without validation: the roles, quorum and reasons come from Policies the operator checked, and the
        # joined reasons may be longer than a prompt a workflow author may write.
        approval = Approval.model_construct(
            approvers=Approvers.model_construct(roles=cast("list[Role]", sorted(required.roles)), users=[]),
            quorum=required.quorum,
            prompt="; ".join(required.reasons),
            expiry=f"{round(self.expiry / timedelta(milliseconds=1))}ms",
        )
        return Step.model_construct(name=POLICY_APPROVAL_STEP, type="approval", approval=approval)


#: The gate of a task that asks for a human where no Policy has approval rules.
UNRULED = ApprovalGate(_no_rules)


def _approved(conn: sa.Connection, task_id: str) -> bool:
    """Whether some approval of the task was approved (by a human: nothing else approves one)."""
    found = conn.execute(
        sa.select(approvals.c.id).where(approvals.c.task_id == task_id, approvals.c.state == ApprovalState.APPROVED)
    ).first()
    return found is not None


def requested_details(required: Requirement) -> dict[str, Any]:
    """What the ``approval.requested`` event of a Policy approval says besides an approval step's: which rules
    of which Policies asked for it."""
    return {"rules": list(required.rules), "policies": [str(p) for p in required.policies]}


def is_policy_approval(step: str, spec: WorkflowSpec) -> bool:
    """Whether an approval at ``step`` is a Policy's (a workflow may name a step of its own ``policy-approval``)."""
    return step == POLICY_APPROVAL_STEP and all(s.name != step for s in spec.steps)


def satisfied_by(conn: sa.Connection, task_id: str, required: Requirement) -> str | None:
    """The task's own approval step that already meets ``required``, if any: approved by at least the quorum of
    distinct approvers, open to no named users and to no role the rules do not accept (so whoever approved it
    held a role the Policies accept). Then the Policies' safety net is already met and nobody is asked twice."""
    rows = conn.execute(
        sa.select(approvals.c.step, approvals.c.roles, approvals.c.users, approvals.c.decisions).where(
            approvals.c.task_id == task_id,
            approvals.c.state == ApprovalState.APPROVED,
            approvals.c.step != POLICY_APPROVAL_STEP,
        )
    ).all()
    for row in rows:
        approvers = {d["approver"] for d in row.decisions if d["decision"] == "approve"}
        if row.roles and not row.users and set(row.roles) <= required.roles and len(approvers) >= required.quorum:
            return str(row.step)
    return None


def record(
    conn: sa.Connection,
    task: sa.Row[Any],
    required: Requirement,
    decision: str,
    now: datetime,
    *,
    by: str | None = None,
) -> None:
    """The audit record of the gate's verdict on a task: ``required`` (parked), ``unsatisfiable`` (refused) or
    ``satisfied`` (``by`` the workflow's own approval step)."""
    details: dict[str, Any] = {
        "task": task.id,
        "workflow": task.workflow,
        "workflowVersion": task.workflow_version,
        "rules": list(required.rules),
        "roles": sorted(required.roles),
        "quorum": required.quorum,
        "separationOfDuties": required.separation_of_duties,
        "reasons": list(required.reasons),
        "policies": [str(p) for p in required.policies],
    }
    if by is not None:
        details["satisfiedBy"] = by
    entry = Entry("approval-rule", f"task/{task.id}", decision, details, tenant=task.tenant, actor="engine")
    audit.append(conn, entry, now=now)
    after_commit(conn, policy_metrics.DECISIONS.labels("approval", decision).inc)


def _step_outputs(conn: sa.Connection, codec: PayloadCodec, task_id: str) -> dict[str, Any]:
    """Each succeeded step's output by name (the latest visit's, when a step ran more than once)."""
    rows = conn.execute(
        sa.select(step_runs.c.name, step_runs.c.output, step_runs.c.output_ref)
        .where(step_runs.c.task_id == task_id, step_runs.c.state == StepState.SUCCEEDED)
        .order_by(step_runs.c.seq)
    ).all()
    return {row.name: codec.decode(row.output, row.output_ref) for row in rows}
