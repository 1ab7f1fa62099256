"""``POST /v1/erasures``: a tenant admin's GDPR erasure request; every task of the data subject in the caller's
tenant goes, with everything kept from it, and the erasure is audited (``engine.store.purge.erase``)."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from pydantic import Field

from api.auth import require
from api.problems import ProblemError, problem_responses
from api.schemas import ApiModel, RequestModel
from api.state import Gateway, gateway
from api.store import Principal
from api.telemetry import gateway_span
from policies.erasure import ErasureRequestError

router = APIRouter(prefix="/v1/erasures", tags=["governance"])
Admin = Annotated[Principal, Depends(require("admin"))]


class ErasureRequest(RequestModel):
    """Whose data to erase."""

    subject: str = Field(min_length=1, max_length=253, description="The subject id (tasks' policy.subject).")
    fields: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list,
        max_length=16,
        description="Also erase tasks whose input field (dotted path, e.g. customer.id) holds the id.",
    )


class Remaining(ApiModel):
    """A place outside the store that keeps copies of the subject's data until its own retention."""

    place: str = Field(description="kafka-topic (a kafkaSink topic), events (the events bus), tracing-backend.")
    topic: str | None = Field(default=None, description="The Kafka topic, for a kafka-topic.")
    records: int | None = Field(default=None, description="Records of the erased tasks there.")
    tombstones: int | None = Field(default=None, description="Of those, keys a tombstone was published for.")
    tasks: int | None = Field(default=None, description="Erased tasks whose spans were exported there.")
    retention_seconds: float | None = Field(default=None, description="The topic's retention by the Policies.")
    until: str = Field(description="What removes them.")


class ErasureView(ApiModel):
    """What was erased; the subject appears only as its digest."""

    subject_digest: str = Field(description="sha256 of the subject id, as the audit record names it.")
    tasks: int = Field(description="Tasks erased.")
    payload_logs: int = Field(description="Payload log records erased.")
    spans: int = Field(description="Spans of the tasks this gateway kept for their traces, forgotten.")
    remaining: list[Remaining] = Field(
        description="Where copies stay until their own retention (Kafka topics, the events bus, a tracing backend)."
    )
    audit_record: int = Field(description="Sequence number of the erasure's audit record.")


@router.post(
    "",
    response_model=ErasureView,
    summary="Erase a data subject's tasks (GDPR)",
    responses=problem_responses(401, 403, 422),
)
async def erase(
    *, request: Request, body: ErasureRequest, principal: Admin, gw: Annotated[Gateway, Depends(gateway)]
) -> ErasureView:
    with gateway_span(request, "erase", tenant=principal.tenant):
        try:
            erased = await anyio.to_thread.run_sync(
                lambda: gw.engine.erase(
                    body.subject, fields=body.fields, actor=principal.name, tenant=principal.tenant, spans=gw.spans
                )
            )
        except ErasureRequestError as error:
            raise ProblemError(422, "validation-failed", str(error)) from None
    return ErasureView(
        subject_digest=erased.subject_digest,
        tasks=len(erased.tasks),
        payload_logs=erased.payload_logs,
        spans=erased.beyond.get("spans", 0),
        remaining=[Remaining.model_validate(entry) for entry in erased.beyond.get("remaining", ())],
        audit_record=erased.record,
    )
