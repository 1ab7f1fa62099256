"""A stand-in claimant portal for `aiplane dev`: the system the claims-completion agent asks for a missing document.

A real portal would e-mail the claimant and hold the request until they upload the document; this one answers at
once from the documents "uploaded" under ``documents/`` (``<claimId>-<documentType>.txt``) and otherwise reports
the request as sent and pending. Serve it (``aiplane dev`` does, for the ``claimant-portal`` Connector)::

    bentoml serve --working-dir examples/claims-triage/portal service:ClaimantPortal --port 3000

API ``request_document`` (POST, JSON ``{"claimId": "CLM-2001", "documentType": "policy-schedule"}``) -> the
request: its id, status ``received`` (with the document's text) or ``requested`` (the claimant has not sent it
yet). Requests are idempotent by the caller's ``Idempotency-Key``: a retried request gets the first answer, so the
claimant is asked once.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Literal

import bentoml
from pydantic import BaseModel, Field

DOCUMENTS = Path(__file__).resolve().parent / "documents"
MAX_REQUESTS = 10_000

DocumentType = Literal["policy-schedule", "invoice", "police-report", "medical-report"]
ClaimId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


class DocumentRequest(BaseModel):
    """A request for one document of one claim, as the claimant portal tracks it."""

    request_id: str = Field(serialization_alias="requestId")
    claim_id: str = Field(serialization_alias="claimId")
    document_type: DocumentType = Field(serialization_alias="documentType")
    status: Literal["received", "requested"] = Field(
        description="received: the claimant uploaded it (document holds its text); requested: asked, not yet sent."
    )
    document: str | None = Field(description="The document's text once received.")


def _on_file(claim_id: str, document_type: str) -> str | None:
    # The pattern on claimId keeps the name inside DOCUMENTS.
    path = DOCUMENTS / f"{claim_id}-{document_type}.txt"
    return path.read_text().strip() if path.is_file() else None


@bentoml.service(name="claimant-portal", traffic={"timeout": 10})
class ClaimantPortal:
    """Asks claimants for missing documents; answers with the document when the claimant has uploaded it."""

    def __init__(self) -> None:
        self.requests: dict[str, DocumentRequest] = {}

    @bentoml.api  # type: ignore[untyped-decorator]  # bentoml is untyped (Any)
    def request_document(
        self,
        ctx: bentoml.Context,
        claimId: ClaimId,  # noqa: N803  # the wire name: the agent's arguments are camelCase
        documentType: DocumentType,  # noqa: N803
    ) -> dict[str, object]:
        """Ask the claimant of claimId for a document; its text when they have uploaded it."""
        key = ctx.request.headers.get("idempotency-key") or f"{claimId}/{documentType}"
        found = self.requests.get(key)
        if found is None:
            document = _on_file(claimId, documentType)
            found = DocumentRequest(
                request_id=f"req-{uuid.uuid4().hex[:12]}",
                claim_id=claimId,
                document_type=documentType,
                status="received" if document is not None else "requested",
                document=document,
            )
            if len(self.requests) >= MAX_REQUESTS:
                self.requests.clear()
            self.requests[key] = found
        return found.model_dump(mode="json", by_alias=True)


__all__ = ["ClaimantPortal"]
