"""PlanRequests for the planner tests: the claims agent of issue 9, which for an incomplete claim decides between
requesting a missing document, re-running extraction, or escalating."""

from __future__ import annotations

from typing import Any

from crds.planner import PlanRequest

ACTIONS: list[dict[str, Any]] = [
    {
        "name": "request-document",
        "description": "Ask the claimant for a missing document, such as a police report, a receipt or a medical "
        "certificate, through the document-request connector.",
        "kind": "connector",
        "inputSchema": {
            "type": "object",
            "properties": {"claimId": {"type": "string"}, "documentType": {"type": "string"}},
            "required": ["claimId", "documentType"],
        },
        "cost": 1.0,
    },
    {
        "name": "rerun-extraction",
        "description": "Run the claims extraction model again on the claim's documents when the extracted fields "
        "(amount, incident date, policy number) are empty or wrong.",
        "kind": "model",
        "inputSchema": {"type": "object"},
        "cost": 1.0,
    },
    {
        "name": "notify-adjuster",
        "description": "Send a message to the human claims adjuster.",
        "kind": "connector",
        "inputSchema": {"type": "object"},
        "cost": 1.0,
    },
]

BUDGET = {"stepsLeft": 5, "costLeft": 20.0, "secondsLeft": 300.0}


def entry(step: int, action: str, outcome: str, observation: Any = None, **extra: Any) -> dict[str, Any]:
    return {"step": step, "action": action, "confidence": 0.9, "outcome": outcome, "observation": observation} | extra


def request(
    *,
    goal: str = "Complete claim C-1",
    state: Any = None,
    transcript: list[dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
    actions: list[dict[str, Any]] | None = None,
) -> PlanRequest:
    return PlanRequest.model_validate(
        {
            "goal": goal,
            "state": {"claimId": "C-1", "missingDocuments": ["police_report"]} if state is None else state,
            "actions": ACTIONS if actions is None else actions,
            "transcript": transcript or [],
            "budget": BUDGET,
            "config": config or {},
        }
    )
