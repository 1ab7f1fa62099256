"""``POST /v1/detokenize``: tokenized personal data in clear again, for the holders of a Policy's
``pii.unmaskRoles``; every request, opened or refused, is in the audit log (``policies.unmask``).

A POST of its own rather than ``?unmask=true`` on task reads: tokens travel beyond the task store (Kafka sink
records, payload logs, dead letters, traces), so an auditor must be able to open a value wherever they found it;
opening is a decision with a stated reason and an audit record, not a view of a cacheable read; and the clear
values stay out of URLs, access logs and caches (the answer is ``Cache-Control: no-store``). ``taskId`` opens
everything the store keeps of one task, for the common case of investigating a task.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import Field

from api.auth import authenticate
from api.problems import ProblemError, field_error, problem_responses
from api.schemas import ULID_PATTERN, ApiModel, RequestModel
from api.state import Gateway, gateway
from api.store import Principal
from api.telemetry import gateway_span
from policies.audit import Entry
from policies.tokens import InvalidTokenError
from policies.unmask import DENIED, INVALID, OPENED, Opened, open_tokens, refusal, unmask_entry

router = APIRouter(prefix="/v1/detokenize", tags=["governance"])
Caller = Annotated[Principal, Depends(authenticate)]
GatewayDep = Annotated[Gateway, Depends(gateway)]


class DetokenizeRequest(RequestModel):
    """What to open, and why. Give ``value`` with ``workflow``, or ``taskId``."""

    value: Any = Field(
        default=None,
        description="JSON holding tokens (<EMAIL_ADDRESS:t:...>), e.g. a Kafka sink record, a task result or a log "
        "field, as aiplane wrote it.",
    )
    workflow: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="The workflow whose Policies masked value (their unmaskRoles decide); taken from the task with "
        "taskId.",
    )
    task_id: str | None = Field(
        default=None, pattern=ULID_PATTERN, description="Open everything the store keeps of this task instead."
    )
    reason: str = Field(
        min_length=1, max_length=500, description="Why you open it (a case or ticket): kept in the audit record."
    )


class DetokenizeView(ApiModel):
    """The value with its tokens opened; redacted and hashed values stay as they are."""

    value: Any = Field(
        description="The value in clear; with taskId: {input, result, vars, error, steps: {name: output}}."
    )
    tokens: int = Field(description="How many tokens were opened.")
    entities: dict[str, int] = Field(description="Tokens opened per entity type.")
    audit_record: int = Field(description="Sequence number of this detokenization's audit record.")


@router.post(
    "",
    response_model=DetokenizeView,
    summary="Open tokenized personal data (unmask roles only; audited)",
    responses=problem_responses(401, 403, 404, 422, 503),
)
async def detokenize(*, request: Request, body: DetokenizeRequest, principal: Caller, gw: GatewayDep) -> Response:
    tenant = principal.tenant
    with gateway_span(request, "detokenize", tenant=tenant):
        payload, workflow, subject = await anyio.to_thread.run_sync(lambda: _target(gw, tenant, body))
        masking = gw.engine.pii
        pii = masking.policy_for(workflow) if masking is not None else None

        def record(decision: str, opened: Opened | None = None, why: str | None = None) -> int:
            entry: Entry = unmask_entry(
                decision,
                tenant=tenant,
                actor=principal.name,
                subject=subject,
                workflow=workflow,
                roles=principal.roles,
                reason=body.reason,
                policies=getattr(pii, "sources", ()),
                opened=opened,
                why=why,
            )
            return gw.engine.audit.append(
                entry.kind, entry.subject, entry.decision, entry.details, tenant=tenant, actor=principal.name
            ).seq

        why = refusal(pii, principal.has_any, workflow)
        if why is not None:
            await anyio.to_thread.run_sync(lambda: record(DENIED, why=why))
            raise ProblemError(403, "unmask-denied", why, workflow=workflow)
        keys = masking.keys if masking is not None else None
        if keys is None:
            raise ProblemError(
                503,
                "pii-key-missing",
                "this gateway has no PII key (AIPLANE_PII_KEY or AIPLANE_PII_KEY_FILE), so it cannot open tokens; "
                "give it the key its workers mask with",
            )
        try:
            opened = open_tokens(payload, tenant, keys, root="$" if body.task_id is None else "task")
        except InvalidTokenError as error:
            invalid = str(error)
            await anyio.to_thread.run_sync(lambda: record(INVALID, why=invalid))
            raise ProblemError(
                422,
                "invalid-token",
                f"{invalid}: send tokens as aiplane wrote them, from this tenant's data",
                errors=[field_error("value" if body.task_id is None else "taskId", invalid)],
            ) from None
        # The record first: no value leaves in clear without it.
        seq = await anyio.to_thread.run_sync(lambda: record(OPENED, opened=opened))
    summary = opened.summary()
    view = DetokenizeView(value=opened.value, tokens=summary["tokens"], entities=summary["entities"], audit_record=seq)
    return Response(
        view.model_dump_json(by_alias=True), media_type="application/json", headers={"Cache-Control": "no-store"}
    )


def _target(gw: Gateway, tenant: str, body: DetokenizeRequest) -> tuple[Any, str, str]:
    """(payload, workflow, audit subject) of the request; a task of another tenant is not found (404)."""
    if body.task_id is None:
        if body.workflow is None:
            raise ProblemError(
                422,
                "validation-failed",
                "give the workflow whose Policies masked the value (or a taskId instead of a value)",
                errors=[field_error("workflow", "required with value")],
            )
        return body.value, body.workflow, f"workflow/{body.workflow}/detokenize"
    if body.value is not None:
        raise ProblemError(
            422,
            "validation-failed",
            "give either value (with workflow) or taskId, not both",
            errors=[field_error("value", "not allowed with taskId")],
        )
    task = gw.engine.get(tenant, body.task_id)
    if body.workflow is not None and body.workflow != task.workflow:
        raise ProblemError(
            422,
            "validation-failed",
            f"task {task.id} is of workflow {task.workflow!r}, not {body.workflow!r}; leave workflow out",
            errors=[field_error("workflow", f"the task's workflow is {task.workflow!r}")],
        )
    steps = {run.name: run.output for run in gw.engine.steps(tenant, task.id)}
    payload = {"input": task.input, "result": task.result, "vars": task.vars, "error": task.error, "steps": steps}
    return payload, task.workflow, f"task/{task.id}/detokenize"
