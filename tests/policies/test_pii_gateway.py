"""PII masking through the real gateway, with Policy resources as `aiplane dev` loads them: a claim carrying an
e-mail, a phone number, a payment card, an IBAN, an SSN and a name (in a labelled field) is submitted over HTTP to
the gateway served by uvicorn, under a file Policy that redacts or hashes them. None of those values is then in the
store (the SQLite file and its WAL byte for byte, every table row by row, the data folder), the logs (the gateway's,
uvicorn's and the engine's, the sink's log line included), the task's spans (``GET /v1/tasks/{id}/trace`` and the
process's span store), the sink's record or any API answer (the submission, the task, its events, its lineage);
their masked forms are."""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from aiplane.dev import DEV_TENANT, running
from api import create_api_key
from engine import Engine
from engine import Record as SinkRecord
from engine.tracing import TaskSpanStore
from tests.api.conftest import Served
from tests.fixtures.polling import assert_eventually

CLAIM: dict[str, Any] = {
    "claimId": "CLM-0000077",
    "claimant": {
        "name": "Jane Roe",
        "email": "jane.roe@example.com",
        "phone": "+1 415-555-0132",
        "ssn": "219-09-9999",
    },
    "description": "Refund to card 4111 1111 1111 1111 or IBAN DE89 3704 0044 0532 0130 00.",
    "amount": 1200,
}
# Each value, and the entity its mask names.
SECRETS = {
    "Jane Roe": "PERSON",
    "jane.roe@example.com": "EMAIL_ADDRESS",
    "415-555-0132": "PHONE_NUMBER",
    "219-09-9999": "US_SSN",
    "4111 1111 1111 1111": "CREDIT_CARD",
    "DE89 3704 0044 0532 0130 00": "IBAN_CODE",
}
# Parts of the values that would give them away if a mask left them behind.
FRAGMENTS = ["jane.roe", "555-0132", "09-9999", "1111 1111", "0532 0130", "Roe"]

WORKFLOW = """\
apiVersion: aiplane.io/v1alpha1
kind: Workflow
metadata:
  name: claims
  labels: {team: claims}
spec:
  steps:
    - name: triage
      type: rules
      rules:
        set:
          contact: input.claimant.email
          who: input.claimant.name
          note: input.description
    - name: publish
      type: connector
      connector:
        name: decisions
      end: true
---
apiVersion: aiplane.io/v1alpha1
kind: Connector
metadata:
  name: decisions
  labels: {team: claims}
spec:
  type: kafkaSink
  kafkaSink:
    bootstrapServers: unused:9092
    topic: claims-out
    key: input.claimId
    value:
      claimant: input.claimant
      contact: steps.triage.output.vars.contact
      note: steps.triage.output.vars.note
"""


def _policy(action: str) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: aiplane.io/v1alpha1
        kind: Policy
        metadata:
          name: claims-pii
        spec:
          selector:
            kinds: [Workflow, Connector]
            matchLabels: {{team: claims}}
          pii:
            entities: [EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE, US_SSN, PERSON]
            action: {action}
        """
    )


def _mask(action: str, entity: str) -> str:
    """The start of the mask of ``entity``: the whole mask when redacted, ``<ENTITY:h:`` and a digest when hashed."""
    return f"<{entity}>" if action == "redact" else f"<{entity}:h:"


def _store(engine: Engine, data_dir: Path) -> str:
    """The SQLite file and its WAL byte for byte, every table row by row (blobs decoded), every file of the data
    folder (logs, keys, payloads)."""
    parts = [p.read_bytes().decode("utf-8", errors="replace") for p in data_dir.rglob("*") if p.is_file()]
    with engine.db.read() as conn:
        for table in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                parts.extend(
                    bytes(v).decode("utf-8", errors="replace") if isinstance(v, bytes | memoryview) else str(v)
                    for v in row
                )
    return "\n".join(parts)


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record at DEBUG, uvicorn's error logger (which does not propagate) included."""
    caplog.set_level(logging.DEBUG)
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(caplog.handler)
    yield caplog
    uvicorn_log.removeHandler(caplog.handler)


@dataclass
class Run:
    """What one submission left behind: the task's id, the task as the gateway answers it, every API answer (the
    trace route's last), the trace route's spans, the sink's record and the store's text."""

    task_id: str
    task: dict[str, Any]
    answers: list[str]
    trace: dict[str, Any]
    record: SinkRecord
    stored: str


def _submit(action: str, mode: str, tmp_path: Path) -> Run:
    """One claim through the gateway served by uvicorn, under the Policy file of ``action``, as `aiplane dev` runs it;
    the engine closed on return."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "workflow.yaml").write_text(WORKFLOW)
    (manifests / "policy.yaml").write_text(_policy(action))
    data_dir = tmp_path / "data"
    answers: list[str] = []
    with running(manifests, data_dir) as stack:
        assert stack.engine is not None
        engine = stack.engine
        # The gateway `aiplane dev` serves: the manifests' Policies, followed.
        app = stack.gateway()
        key = create_api_key(engine, DEV_TENANT, "intake", ["submitter", "auditor"])
        headers = {"Authorization": f"Bearer {key}"}
        server = Served(app)
        try:
            with engine.worker(), httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
                submitted = http.post(f"/v1/tasks?mode={mode}", json={"workflow": {"name": "claims"}, "input": CLAIM})
                assert submitted.status_code in (200, 201, 202), submitted.text
                answers.append(submitted.text)
                task_id = submitted.json()["id"]

                def finished() -> dict[str, Any]:
                    task = http.get(f"/v1/tasks/{task_id}")
                    assert task.status_code == 200, task.text
                    body: dict[str, Any] = task.json()
                    assert body["state"] == "succeeded", body
                    return body

                task = assert_eventually(finished, timeout=30, interval=0.05)
                answers.append(json.dumps(task))
                for path in ("events", "lineage", "trace"):
                    response = http.get(f"/v1/tasks/{task_id}/{path}")
                    assert response.status_code == 200, response.text
                    answers.append(response.text)
        finally:
            server.close()
        [record] = stack.sink.records("claims-out")
        stored = _store(engine, data_dir)
    # After the engine closed, SQLite checkpointed its WAL into the file: read the file again.
    stored += "\n".join(p.read_bytes().decode("utf-8", errors="replace") for p in data_dir.glob("engine.db*"))
    return Run(task_id, task, answers, response.json(), record, stored)


def _masked_where_the_values_were(action: str, run: Run) -> None:
    """The stored input, the step output and the sink record hold the masks, structure and the rest kept."""
    masked = run.task["input"]
    assert (masked["claimId"], masked["amount"]) == ("CLM-0000077", 1200)
    assert masked["claimant"]["name"].startswith(_mask(action, "PERSON"))
    assert masked["claimant"]["email"].startswith(_mask(action, "EMAIL_ADDRESS"))
    assert masked["claimant"]["phone"].startswith(_mask(action, "PHONE_NUMBER"))
    assert masked["claimant"]["ssn"].startswith(_mask(action, "US_SSN"))
    assert masked["description"].startswith("Refund to card " + _mask(action, "CREDIT_CARD"))
    assert _mask(action, "IBAN_CODE") in masked["description"]
    assert run.record.value["claimant"] == masked["claimant"]
    [triage, _] = run.task["steps"]
    assert triage["output"]["vars"]["contact"] == masked["claimant"]["email"]
    if action == "hash":
        # One digest per value (and tenant): the copies in the step output and the sink are the input's hash, and
        # different values have different digests.
        assert run.record.value["contact"] == masked["claimant"]["email"]
        assert len({masked["claimant"][field] for field in ("name", "email", "phone", "ssn")}) == 4


@pytest.mark.parametrize("mode", ["async", "sync"])  # the submission fast path, and the route that waits
@pytest.mark.parametrize("action", ["redact", "hash"])
def test_personal_data_submitted_to_the_gateway_is_masked_everywhere(
    action: str, mode: str, tmp_path: Path, spans: TaskSpanStore, logged: pytest.LogCaptureFixture
) -> None:
    run = _submit(action, mode, tmp_path)

    spanned = [
        f"{s.name} {dict(s.attributes or {})} {s.status.description} {s.events}" for s in spans.spans(run.task_id)
    ]
    assert run.trace["spans"], "the task has spans"
    assert spanned, "the process recorded the task's spans"
    logs = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in logged.records)
    assert "sink record" in logs  # dev logs each sink record: its value is searched too
    sunk = json.dumps({"key": run.record.key, "value": run.record.value})
    places = {
        "store": run.stored,
        "logs": logs,
        "trace route": run.answers[-1],
        "span store": "\n".join(spanned),
        "sink": sunk,
        "API answers": "\n".join(run.answers),
    }
    # The searches do see the task's data.
    assert "CLM-0000077" in run.stored
    assert "CLM-0000077" in sunk
    for place, text in places.items():
        for secret in [*SECRETS, *FRAGMENTS]:
            assert secret not in text, f"{secret!r} is in the {place}"
    # The masked forms are there instead.
    for entity in SECRETS.values():
        for place in ("store", "sink", "logs", "API answers"):
            assert _mask(action, entity) in places[place], f"no {entity} mask in the {place}"
    _masked_where_the_values_were(action, run)
