"""``/v1/approvals``: list, read and decide the human gates of the caller's tenant."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio.to_thread
from fastapi import APIRouter, Body, Depends, Path, Query, Request

from api.auth import Approver, Reader
from api.problems import ProblemError, field_error, problem_responses
from api.schemas import ULID_PATTERN, ApprovalPage, ApprovalView, ApproveRequest, RejectRequest
from api.state import Gateway, gateway
from api.store import Principal
from api.telemetry import gateway_span
from engine import ATTR_TASK_ID, Approval, Task
from policies import metrics as policy_metrics
from policies.access import separation_required, separation_violation
from policies.effective import ref

router = APIRouter(prefix="/v1/approvals", tags=["approvals"])

ApprovalId = Annotated[str, Path(alias="approvalId", pattern=ULID_PATTERN, description="Approval id.")]
GatewayDep = Annotated[Gateway, Depends(gateway)]


@router.get(
    "",
    response_model=ApprovalPage,
    summary="List approvals (pending by default)",
    responses=problem_responses(401, 403, 422),
)
async def list_approvals(
    *,
    request: Request,
    principal: Reader,
    gw: GatewayDep,
    state: Annotated[
        Literal["pending", "approved", "rejected", "expired", "cancelled", "all"],
        Query(description="Only approvals in this state; all for every state."),
    ] = "pending",
    task_id: Annotated[str | None, Query(alias="taskId", pattern=ULID_PATTERN, description="Only this task's.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size.")] = 50,
    cursor: Annotated[str | None, Query(pattern=ULID_PATTERN, description="nextCursor of the previous page.")] = None,
) -> ApprovalPage:
    with gateway_span(request, "list_approvals", tenant=principal.tenant):
        page = await anyio.to_thread.run_sync(
            lambda: gw.engine.approvals(
                principal.tenant, None if state == "all" else state, task_id=task_id, limit=limit, cursor=cursor
            )
        )
    return ApprovalPage(items=[ApprovalView.of(a) for a in page.items], next_cursor=page.next_cursor)


@router.get(
    "/{approvalId}",
    response_model=ApprovalView,
    summary="Get an approval",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_approval(*, request: Request, approval_id: ApprovalId, principal: Reader, gw: GatewayDep) -> ApprovalView:
    with gateway_span(request, "get_approval", tenant=principal.tenant):
        approval = await anyio.to_thread.run_sync(lambda: gw.engine.approval(approval_id, tenant=principal.tenant))
    return ApprovalView.of(approval)


_DECISION_RESPONSES = problem_responses(401, 403, 404, 409, 422)


@router.post(
    "/{approvalId}/approve",
    response_model=ApprovalView,
    summary="Approve: at quorum the task continues",
    responses=_DECISION_RESPONSES,
)
async def approve(
    *,
    request: Request,
    approval_id: ApprovalId,
    principal: Approver,
    gw: GatewayDep,
    body: Annotated[ApproveRequest | None, Body()] = None,
) -> ApprovalView:
    body = body or ApproveRequest()
    return await _decide(
        request=request,
        gw=gw,
        principal=principal,
        approval_id=approval_id,
        approver=body.approver,
        reason=body.reason,
        approve=True,
    )


@router.post(
    "/{approvalId}/reject",
    response_model=ApprovalView,
    summary="Reject: the task continues at onReject, or ends as rejected",
    responses=_DECISION_RESPONSES,
)
async def reject(
    *,
    request: Request,
    approval_id: ApprovalId,
    principal: Approver,
    gw: GatewayDep,
    body: Annotated[RejectRequest, Body()],
) -> ApprovalView:
    return await _decide(
        request=request,
        gw=gw,
        principal=principal,
        approval_id=approval_id,
        approver=body.approver,
        reason=body.reason,
        approve=False,
    )


async def _decide(
    *,
    request: Request,
    gw: Gateway,
    principal: Principal,
    approval_id: str,
    approver: str | None,
    reason: str,
    approve: bool,
) -> ApprovalView:
    if approver is not None and approver != principal.name:
        raise ProblemError(
            403,
            "approver-mismatch",
            f"decisions are recorded as the authenticated principal ({principal.name!r}); omit approver or use "
            "your own API key",
            errors=[field_error("approver", "must be the authenticated principal or omitted")],
        )
    engine = gw.engine
    operation = "approve" if approve else "reject"
    with gateway_span(request, operation, tenant=principal.tenant) as span:
        # Scoped to the caller's tenant: another tenant's approval is not found.
        current = await anyio.to_thread.run_sync(lambda: engine.approval(approval_id, tenant=principal.tenant))
        span.set_attribute(ATTR_TASK_ID, current.task_id)
        request.state.task_id = current.task_id
        if approve:
            task: Task = await anyio.to_thread.run_sync(lambda: engine.get(principal.tenant, current.task_id))
            # Separation of duties, where a governing Policy's approval rule asks for it (rejecting stays open:
            # a submitter may stop their own task).
            governing = gw.governing(task.workflow)
            required = separation_required(governing, default=False)
            violation = separation_violation(task.submitted_by, principal.name, required=required)
            if violation is not None:
                policy_metrics.denied("separation_of_duties")
                # On the audit log with the Policy versions whose approval rules asked for it.
                details = {
                    "reason": "separation-of-duties",
                    "detail": violation,
                    "approval": approval_id,
                    "policies": sorted(
                        str(ref(p)) for p in governing if any(r.separation_of_duties for r in p.spec.approvals)
                    ),
                }
                await anyio.to_thread.run_sync(
                    lambda: engine.audit.append(
                        "policy", f"task/{task.id}", "deny", details, tenant=principal.tenant, actor=principal.name
                    )
                )
                raise ProblemError(403, "separation-of-duties", violation, task_id=task.id, approval_id=approval_id)
        decide = engine.approve if approve else engine.reject

        def run() -> Approval:
            return decide(approval_id, principal.name, reason, tenant=principal.tenant, roles=principal.roles)

        approval = await anyio.to_thread.run_sync(run)
    return ApprovalView.of(approval)
