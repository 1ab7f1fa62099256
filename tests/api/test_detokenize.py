"""``POST /v1/detokenize`` through the real gateway and engine: a holder of the Policy's unmask role opens a task's
tokens (by task id, or a value found elsewhere, such as a Kafka sink record); everyone else gets 403; altered or
foreign tokens 422; every request, opened or refused, is an audit record without a value, and the chain verifies."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiplane import cli
from api import create_api_key, create_app
from crds.policy import Policy
from engine import Engine, StaticModelResolver, TaskState
from policies.effective import Target
from policies.masking import WorkflowMasking
from policies.sources import PolicySet
from tests.api.conftest import Served, assert_problem, auth
from tests.engine.conftest import Downstream, Reply, fast_worker, wait_done
from tests.policies.test_pii_engine import ANSWER, CLAIM, KEYS, SECRETS

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

WORKFLOW = {
    "steps": [
        {"name": "extract", "type": "model", "model": {"name": "m", "api": "extract", "input": {"id": "input.claimId"}}}
    ]
}


def _policy(name: str, labels: dict[str, str], pii: dict[str, Any]) -> Policy:
    return Policy.model_validate(
        {
            "metadata": {"name": name, "namespace": "default", "generation": 2},
            "spec": {"selector": {"matchLabels": labels}, "pii": pii},
        }
    )


POLICIES = PolicySet(
    [
        _policy(
            "claims-pii",
            {"team": "claims"},
            {
                "entities": ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "PERSON"],
                "fields": ["input.claimant.policyRef"],
                "action": "tokenize",
                "unmaskRoles": ["auditor"],
            },
        ),
        _policy("hr-pii", {"team": "hr"}, {"entities": ["EMAIL_ADDRESS"], "action": "hash"}),
    ]
)
TARGETS = {
    "claims": Target("Workflow", "claims", "default", {"team": "claims"}),
    "hr": Target("Workflow", "hr", "default", {"team": "hr"}),
}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    downstream = Downstream()
    downstream.script("/models/m/extract", Reply(body=ANSWER))

    def policy_for(workflow: str) -> Any:
        target = TARGETS.get(workflow)
        return POLICIES.effective(target).pii if target is not None else None

    engine = Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        sqlite_synchronous="NORMAL",
        model_resolver=StaticModelResolver(
            {"m": [{"version": "v1", "url": downstream.url("/models/m"), "weight": 100}]}
        ),
        pii=WorkflowMasking(policy_for, KEYS),
    )
    engine.register_workflow("claims", WORKFLOW)
    engine.register_workflow("hr", WORKFLOW)
    yield engine
    engine.close()
    downstream.close()


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine)) as client:
        yield client


def _task(engine: Engine, client: TestClient, workflow: str = "claims") -> str:
    submitter = create_api_key(engine, "acme", "sam", ["submitter"])
    response = client.post("/v1/tasks", json={"workflow": {"name": workflow}, "input": CLAIM}, headers=auth(submitter))
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    with fast_worker(engine):
        assert wait_done(engine, "acme", task_id).state == TaskState.SUCCEEDED
    return task_id


def _unmasks(engine: Engine) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (r.subject, r.decision, json.loads(r.details))
        for r in engine.audit.records()
        if r.decision.startswith("unmask")
    ]


def test_an_auditor_opens_a_tasks_tokens_and_the_opening_is_audited(engine: Engine, client: TestClient) -> None:
    task_id = _task(engine, client)
    auditor = create_api_key(engine, "acme", "ada", ["auditor"])
    stored = client.get(f"/v1/tasks/{task_id}", headers=auth(auditor)).json()
    assert stored["input"]["claimant"]["email"].startswith("<EMAIL_ADDRESS:t:")  # reads stay masked

    response = client.post(
        "/v1/detokenize", json={"taskId": task_id, "reason": "CASE-7 chargeback"}, headers=auth(auditor)
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    opened = response.json()
    assert opened["value"]["input"]["claimant"] == CLAIM["claimant"]
    assert opened["value"]["input"]["description"] == CLAIM["description"]
    assert opened["value"]["steps"]["extract"]["adjuster"] == ANSWER["adjuster"]
    assert opened["tokens"] >= 9
    assert opened["entities"]["EMAIL_ADDRESS"] == 3  # the claimant's, and the adjuster's in the step and the result

    [(subject, decision, details)] = _unmasks(engine)
    assert (subject, decision) == (f"task/{task_id}/detokenize", "unmask")
    assert details["reason"] == "CASE-7 chargeback"
    assert details["roles"] == ["auditor"]
    assert details["policies"] == ["default/claims-pii@2"]
    assert "task.input.claimant.email" in details["paths"]
    [record] = [r for r in engine.audit.records() if r.seq == opened["auditRecord"]]
    assert record.actor == "ada"
    everything = "".join(r.details for r in engine.audit.records())
    for secret in SECRETS:
        assert secret not in everything
    assert engine.audit.verify().ok


def test_a_value_found_elsewhere_opens_with_its_workflow(engine: Engine, client: TestClient) -> None:
    task_id = _task(engine, client)
    stored = engine.get("acme", task_id).input
    record = {"claimant": stored["claimant"], "note": f"mail {stored['claimant']['email']} today"}  # a sink record
    auditor = create_api_key(engine, "acme", "ada", ["auditor"])
    response = client.post(
        "/v1/detokenize",
        json={"workflow": "claims", "value": record, "reason": "sink check"},
        headers=auth(auditor),
    )
    assert response.status_code == 200, response.text
    assert response.json()["value"] == {
        "claimant": CLAIM["claimant"],
        "note": f"mail {CLAIM['claimant']['email']} today",
    }
    assert _unmasks(engine)[0][0] == "workflow/claims/detokenize"


def test_who_may_not_unmask_gets_403_and_is_audited(engine: Engine, client: TestClient) -> None:
    task_id = _task(engine, client)
    for roles in (["submitter"], ["approver"]):
        key = create_api_key(engine, "acme", f"eve-{roles[0]}", roles)
        response = client.post("/v1/detokenize", json={"taskId": task_id, "reason": "curious"}, headers=auth(key))
        problem = assert_problem(response, 403, "unmask-denied")
        assert "needs one of the roles ['auditor']" in problem["detail"]
        assert not any(secret in response.text for secret in SECRETS)
    # A workflow whose Policy hashes: nobody can open it, not even an admin.
    hashed = _task(engine, client, "hr")
    admin = create_api_key(engine, "acme", "root", ["admin"])
    problem = assert_problem(
        client.post("/v1/detokenize", json={"taskId": hashed, "reason": "x"}, headers=auth(admin)), 403, "unmask-denied"
    )
    assert "hash its personal data and let nobody unmask it" in problem["detail"]
    assert [d for _, d, _ in _unmasks(engine)] == ["unmask-denied"] * 3


def test_misuse_is_a_problem(engine: Engine, client: TestClient) -> None:
    task_id = _task(engine, client)
    auditor = create_api_key(engine, "acme", "ada", ["auditor"])
    token = engine.get("acme", task_id).input["claimant"]["email"]
    altered = token[:-3] + ("AAA" if not token.endswith("AAA>") else "BBB") + ">"
    cases = [
        ({"workflow": "claims", "value": {"email": altered}, "reason": "x"}, 422, "invalid-token"),
        ({"value": {"email": token}, "reason": "x"}, 422, "validation-failed"),  # no workflow
        ({"taskId": task_id, "value": 1, "reason": "x"}, 422, "validation-failed"),
        ({"taskId": task_id}, 422, "validation-failed"),  # no reason
        ({"taskId": "0" * 26, "reason": "x"}, 404, "task-not-found"),
        ({"taskId": task_id, "workflow": "hr", "reason": "x"}, 422, "validation-failed"),
    ]
    for body, status, slug in cases:
        assert_problem(client.post("/v1/detokenize", json=body, headers=auth(auditor)), status, slug)
    assert_problem(client.post("/v1/detokenize", json={"taskId": task_id, "reason": "x"}), 401)
    # Another tenant's auditor: the task is not found there, and acme's token does not open under globex's key.
    other = create_api_key(engine, "globex", "gus", ["auditor"])
    assert_problem(client.post("/v1/detokenize", json={"taskId": task_id, "reason": "x"}, headers=auth(other)), 404)
    foreign = client.post(
        "/v1/detokenize", json={"workflow": "claims", "value": token, "reason": "x"}, headers=auth(other)
    )
    assert_problem(foreign, 422, "invalid-token")
    assert [d for _, d, _ in _unmasks(engine)] == ["unmask-invalid", "unmask-invalid"]


# ---------------------------------------------------------------- aiplane detokenize (the CLI)


def test_the_cli_opens_a_task_or_a_value_for_an_auditor_and_reports_refusals(
    engine: Engine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server = Served(create_app(engine))
    try:
        task_id = _task(engine, TestClient(create_app(engine)))
        auditor = ("--url", server.base_url, "--api-key", create_api_key(engine, "acme", "ada", ["auditor"]))
        assert cli.main(["detokenize", task_id, "--reason", "CASE-9", *auditor]) == 0
        opened = json.loads(capsys.readouterr().out)
        assert opened["value"]["input"]["claimant"] == CLAIM["claimant"]
        assert opened["tokens"] >= 9
        # A value found elsewhere (a sink record), from a file, with the workflow whose Policies masked it.
        found = tmp_path / "record.json"
        found.write_text(json.dumps({"claimant": engine.get("acme", task_id).input["claimant"]}))
        assert (
            cli.main(["detokenize", "--workflow", "claims", "--value", f"@{found}", "--reason", "sink", *auditor]) == 0
        )
        assert json.loads(capsys.readouterr().out)["value"] == {"claimant": CLAIM["claimant"]}
        # Without an unmask role: the gateway's 403, reported, nothing opened.
        submitter = ("--url", server.base_url, "--api-key", create_api_key(engine, "acme", "eve", ["submitter"]))
        assert cli.main(["detokenize", task_id, "--reason", "curious", *submitter]) == 1
        out = capsys.readouterr()
        assert "403" in out.err
        assert not any(secret in out.out + out.err for secret in SECRETS)
        # Misuse is the CLI's own error: a task and a workflow, or a workflow without a value.
        assert cli.main(["detokenize", task_id, "--workflow", "claims", "--reason", "x", *auditor]) == 2
        assert cli.main(["detokenize", "--workflow", "claims", "--reason", "x", *auditor]) == 2
        capsys.readouterr()
    finally:
        server.close()
    assert [(s, d) for s, d, _ in _unmasks(engine)] == [
        (f"task/{task_id}/detokenize", "unmask"),
        ("workflow/claims/detokenize", "unmask"),
        (f"task/{task_id}/detokenize", "unmask-denied"),
    ]
    assert engine.audit.verify().ok
