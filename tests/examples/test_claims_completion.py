"""The claims-completion agent end to end on the embedded default: the example's manifests under `aiplane dev`'s
stack (SQLite, in-process bus, the gateway) with the real BentoML services it starts: the claims extractor, the
scripted planner and the stand-in claimant portal.

An incomplete claim: the agent asks the portal for the missing policy schedule, reads the claim again with it and
completes it. A claim whose document never came: the agent hands it to a person, whose approval sees the
transcript. A health claim: the Policy's agentActions rule denies the document request, which is recorded and told
to the planner, and the agent hands over too. Each time the decision records are read back through the gateway and
`aiplane audit verify` passes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from aiplane import cli
from aiplane.dev import DEV_TENANT, DevStack, running
from api import GatewaySettings, create_api_key, create_app
from api.auth import follow_policies
from engine import Engine, WorkerConfig
from engine.store.schema import audit_log
from tests.fixtures.polling import assert_eventually

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "claims-triage"
WORKFLOW = "claims-completion"
LOST_BAG = (
    "Hello, my suitcase was lost on my flight to Lisbon on 2026-10-14 and the airline never found it. "
    "I am claiming EUR 860.00 for the bag and its contents."
)
BROKEN_WINDOW = "Our kitchen window was broken in a storm on 2026-11-03. The glazier charged $640.00 to replace it."
BROKEN_WRIST = "I broke my wrist skiing on 2026-02-11 and the clinic charged EUR 1,250.00 for the cast."


@dataclass
class Dev:
    stack: DevStack
    engine: Engine
    client: TestClient
    submitter: dict[str, str]
    approver: dict[str, str]

    def submit(self, claim_id: str, document: str, **body: Any) -> str:
        response = self.client.post(
            "/v1/tasks",
            json={"workflow": {"name": WORKFLOW}, "input": {"claimId": claim_id, "document": document}, **body},
            headers={**self.submitter, "Idempotency-Key": f"completion-{claim_id}"},
        )
        assert response.status_code in (200, 202), response.text
        task_id: str = response.json()["id"]
        return task_id

    def task(self, task_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/tasks/{task_id}", headers=self.approver)
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    def until(self, task_id: str, *states: str) -> dict[str, Any]:
        def reached() -> dict[str, Any]:
            task = self.task(task_id)
            assert task["state"] in states, f"{task['state']} at {task.get('currentStep')}: {task.get('error')}"
            return task

        return assert_eventually(reached, timeout=120, interval=0.1)

    def decisions(self, task_id: str) -> list[dict[str, Any]]:
        response = self.client.get(f"/v1/tasks/{task_id}/agent-decisions", headers=self.approver)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def audit_kinds(self, task_id: str) -> list[tuple[str, str]]:
        """The agent step's own records (proposals and actions), in order."""
        return [(kind, decision) for kind, decision in self._step_records(task_id) if kind.startswith("agent-")]

    def planner_calls_allowed(self, task_id: str) -> bool:
        """Whether the agent step's Policy records are allow records of its planner's model calls, and there are
        some (the claims Policy governs the planner's Model)."""
        decisions = [decision for kind, decision in self._step_records(task_id) if kind == "policy"]
        return bool(decisions) and set(decisions) == {"allow"}

    def _step_records(self, task_id: str) -> list[tuple[str, str]]:
        with self.engine.db.read() as conn:
            rows = conn.execute(
                sa.select(audit_log.c.kind, audit_log.c.decision)
                .where(audit_log.c.subject.startswith(f"task/{task_id}/step/complete/"))
                .order_by(audit_log.c.seq)
            )
            return [(row.kind, row.decision) for row in rows]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    data_dir = tmp_path_factory.mktemp("completion") / "data"
    with running(EXAMPLES, data_dir) as stack:
        assert stack.engine is not None
        engine = stack.engine
        app = create_app(engine, GatewaySettings(sync_poll_interval=0.02))
        follow_policies(app.state.gateway, stack.policies, stack.workflow_targets(), separation_of_duties=True)
        submitter = create_api_key(engine, DEV_TENANT, "intake", ["submitter", "auditor"])
        approver = create_api_key(engine, DEV_TENANT, "adjuster", ["approver", "auditor"])
        with engine.worker(WorkerConfig(poll_interval=0.02)), TestClient(app) as client:
            yield Dev(
                stack,
                engine,
                client,
                {"Authorization": f"Bearer {submitter}"},
                {"Authorization": f"Bearer {approver}"},
            )


def audit_verifies(dev: Dev, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit", "verify", "--data-dir", str(dev.stack.data_dir)]) == 0
    assert "intact" in capsys.readouterr().out


@pytest.mark.integration
def test_the_agent_requests_the_missing_document_reads_it_and_completes_the_claim(
    dev: Dev, capsys: pytest.CaptureFixture[str]
) -> None:
    task_id = dev.submit("CLM-2001", LOST_BAG)
    task = dev.until(task_id, "succeeded")

    # The first extraction found no policy number; the agent completed the claim with the portal's document.
    extract = next(step for step in task["steps"] if step["name"] == "extract")
    assert extract["output"]["policy_number"] is None
    result = task["result"]
    assert result["status"] == "done"
    assert result["result"] == {
        "claimId": "CLM-2001",
        "policyNumber": "PL-55012345",
        "amount": 860.0,
        "currency": "EUR",
        "claimType": "travel",
    }
    # Planner calls cost 1 each, the document request 2 and the extraction 1.
    assert (result["steps"], result["cost"]) == (3, 6.0)

    request, again, done = dev.decisions(task_id)
    assert (request["action"], request["decision"], request["state"]) == ("request-document", "allowed", "succeeded")
    assert request["arguments"] == {"claimId": "CLM-2001", "documentType": "policy-schedule"}
    assert request["observation"]["status"] == "received"
    assert "PL-55012345" in request["observation"]["document"]
    assert (again["action"], again["decision"], again["state"]) == ("extract", "allowed", "succeeded")
    assert again["arguments"]["document"].startswith(LOST_BAG)
    assert again["observation"]["policy_number"] == "PL-55012345"
    assert (done["decision"], done["result"]["policyNumber"]) == ("done", "PL-55012345")
    assert dev.audit_kinds(task_id) == [
        ("agent-proposal", "allowed"),
        ("agent-action", "succeeded"),
        ("agent-proposal", "allowed"),
        ("agent-action", "succeeded"),
        ("agent-proposal", "done"),
    ]
    assert dev.planner_calls_allowed(task_id)
    audit_verifies(dev, capsys)


@pytest.mark.integration
def test_a_claim_whose_document_has_not_come_goes_to_a_person_with_the_transcript(
    dev: Dev, capsys: pytest.CaptureFixture[str]
) -> None:
    task_id = dev.submit("CLM-2002", BROKEN_WINDOW)
    task = dev.until(task_id, "waiting")

    assert task["currentStep"] == "review"
    # What the approver sees with the task: why the agent stopped and everything it tried.
    agent = next(step for step in task["steps"] if step["name"] == "complete")["output"]
    assert agent["status"] == "escalated"
    assert "The claimant has not sent the document yet" in agent["reason"]
    asked, stopped = agent["transcript"]
    assert (asked["action"], asked["state"], asked["observation"]["status"]) == (
        "request-document",
        "succeeded",
        "requested",
    )
    assert asked["arguments"]["documentType"] == "policy-schedule"
    assert (stopped["decision"], stopped["state"]) == ("escalated", "escalated")

    pending = dev.client.get("/v1/approvals", params={"state": "pending"}, headers=dev.approver).json()["items"]
    [approval] = [a for a in pending if a["taskId"] == task_id]
    assert approval["step"] == "review"
    assert "transcript" in approval["prompt"]
    decided = dev.client.post(
        f"/v1/approvals/{approval['id']}/approve",
        json={"reason": "Called the claimant; the policy schedule is on its way by post."},
        headers=dev.approver,
    )
    assert decided.status_code == 200, decided.text
    dev.until(task_id, "succeeded")
    assert dev.audit_kinds(task_id) == [
        ("agent-proposal", "allowed"),
        ("agent-action", "succeeded"),
        ("agent-proposal", "escalated"),
    ]
    assert dev.planner_calls_allowed(task_id)
    audit_verifies(dev, capsys)


@pytest.mark.integration
def test_policy_denies_the_document_request_on_a_health_claim_and_the_agent_hands_over(
    dev: Dev, capsys: pytest.CaptureFixture[str]
) -> None:
    task_id = dev.submit("CLM-2003", BROKEN_WRIST, policy={"privacy": "health"})
    task = dev.until(task_id, "waiting")

    assert task["currentStep"] == "review"
    denied, stopped = dev.decisions(task_id)
    assert (denied["action"], denied["decision"], denied["state"], denied["attempts"]) == (
        "request-document",
        "denied",
        "denied",
        0,
    )
    assert "no-portal-requests-for-health-claims" in denied["reason"]
    # A manifest has no generation: its Policy is versioned by a digest of its spec (policies.effective.ref).
    [policy] = denied["policies"]
    assert re.fullmatch(r"default/claims-governance@[0-9a-f]{12}", policy), policy
    # The planner was told of the refusal and chose a person.
    assert stopped["decision"] == "escalated"
    assert "Policy does not let the agent contact this claimant" in stopped["reason"]
    assert dev.audit_kinds(task_id) == [("agent-proposal", "denied"), ("agent-proposal", "escalated")]
    assert dev.planner_calls_allowed(task_id)
    audit_verifies(dev, capsys)
