"""POST /v1/erasures: a tenant admin erases a data subject's tasks in their own tenant only; other roles get 403."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from engine import Engine, TaskNotFoundError
from policies.erasure import subject_digest
from tests.api.conftest import Keys, auth


def submit(client: TestClient, key: str, subject: str) -> str:
    response = client.post(
        "/v1/tasks",
        json={"workflow": {"name": "gated"}, "input": {"note": "hi"}, "policy": {"subject": subject}},
        headers=auth(key),
    )
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


def test_admin_erases_the_subject_in_their_tenant(client: TestClient, keys: Keys, engine: Engine) -> None:
    mine = submit(client, keys.alice, "cust-1")
    theirs = submit(client, keys.globex, "cust-1")
    for key in (keys.alice, keys.bob, keys.carol):
        response = client.post("/v1/erasures", json={"subject": "cust-1"}, headers=auth(key))
        assert response.status_code == 403, response.text
    response = client.post("/v1/erasures", json={"subject": "cust-1"}, headers=auth(keys.root))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["tasks"], body["subjectDigest"]) == (1, subject_digest("cust-1"))
    with pytest.raises(TaskNotFoundError):
        engine.get("acme", mine)
    assert engine.get("globex", theirs).input == {"note": "hi"}
    [record] = [r for r in engine.audit.records() if r.kind == "erasure"]
    assert (record.seq, record.tenant, record.actor) == (body["auditRecord"], "acme", "root")
    bad = client.post("/v1/erasures", json={"subject": "x", "fields": ["a..b"]}, headers=auth(keys.root))
    assert bad.status_code == 422
