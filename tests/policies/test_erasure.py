"""GDPR erasure through the real engine: every task of a subject (by annotation, or by a named input field) goes
with its steps, events, idempotency record and blobs, no byte of the subject is left in the SQLite files or the
blob directory, other subjects' tasks stay, and the erasure is in the audit log (by digest, not by name)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiplane.cli import main
from engine import Engine, TaskNotFoundError, TaskState
from engine.runtime.intake import RequestKey, Submission
from engine.store.purge import erase
from policies.erasure import ErasureRequestError, subject_digest
from tests.engine.conftest import fast_worker, wait_done

SUBJECT = "cust-7f3c9e21"
EMAIL = "jane.roe.7f3c9e@example.org"
OTHER = "cust-00aa11bb"
SPEC = {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"contact": "input.email"}}}]}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = Engine(
        f"sqlite:///{tmp_path / 'engine.db'}", data_dir=tmp_path / "data", inline_limit=512, sqlite_synchronous="NORMAL"
    )
    engine.register_workflow("claims", SPEC)
    yield engine
    engine.close()


def submit(engine: Engine, input: dict[str, Any], *, subject: str | None = None, key: str | None = None) -> str:
    request = None
    if key is not None:
        request = RequestKey(
            key=key, fingerprint="f" * 64, respond=lambda task, _: {"id": task.id, "input": task.input}
        )
    [outcome] = engine.submit_many(
        [
            Submission(
                tenant="acme",
                workflow="claims",
                input=input,
                annotations={"subject": subject} if subject else None,
                request=request,
            )
        ]
    )
    task_id: str = outcome.task.id  # type: ignore[union-attr]
    return task_id


def files_holding(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_erasure_leaves_no_trace_of_the_subject(engine: Engine, tmp_path: Path) -> None:
    with fast_worker(engine):
        annotated = submit(engine, {"email": EMAIL, "note": "n" * 600}, subject=SUBJECT, key="req-1")
        by_field = submit(engine, {"email": EMAIL, "customer": {"id": SUBJECT}})
        other = submit(engine, {"email": "someone.else@example.org", "customer": {"id": OTHER}}, subject=OTHER)
        for task_id in (annotated, by_field, other):
            assert wait_done(engine, "acme", task_id).state == TaskState.SUCCEEDED
        engine.relay.drain()
    assert files_holding(tmp_path, EMAIL)  # before: in the store and a blob

    erased = erase(engine.db, engine.codec, SUBJECT, fields=["customer.id"], actor="dpo@acme", now=engine.clock())

    assert set(erased.tasks) == {annotated, by_field}
    assert erased.blobs >= 1
    assert erased.events > 0
    for task_id in (annotated, by_field):
        with pytest.raises(TaskNotFoundError):
            engine.get("acme", task_id)
        assert engine.events(task_id) == []
    assert engine.get("acme", other).input["customer"]["id"] == OTHER
    assert engine.idempotency.claim("acme", "req-1", "f" * 64).owner  # the stored response is gone too
    # No byte of the subject anywhere aiplane keeps data: database, WAL, blobs.
    assert files_holding(tmp_path, EMAIL) == []
    assert files_holding(tmp_path, SUBJECT) == []
    assert files_holding(tmp_path, OTHER)  # the search itself works

    [record] = [r for r in engine.audit.records() if r.kind == "erasure"]
    assert (record.seq, record.actor, record.decision) == (erased.record, "dpo@acme", "erased")
    assert record.subject == f"subject/{subject_digest(SUBJECT)}"
    assert set(json.loads(record.details)["tasks"]) == {annotated, by_field}
    assert engine.audit.verify().ok


def test_erasure_of_an_unknown_subject_is_still_recorded(engine: Engine) -> None:
    erased = erase(engine.db, engine.codec, "nobody", actor="dpo", now=engine.clock())
    assert erased.tasks == ()
    assert [r.kind for r in engine.audit.records()] == ["erasure"]


def test_erasure_request_errors() -> None:
    with pytest.raises(ErasureRequestError):
        erase(None, None, " ", actor="dpo", now=None)  # type: ignore[arg-type]
    with pytest.raises(ErasureRequestError):
        erase(None, None, "x", fields=["a..b"], actor="dpo", now=None)  # type: ignore[arg-type]


def test_aiplane_erase_command(engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with fast_worker(engine):
        task_id = submit(engine, {"email": EMAIL}, subject=SUBJECT)
        wait_done(engine, "acme", task_id)
    engine.close()
    code = main(
        [
            "erase",
            "--subject",
            SUBJECT,
            "--actor",
            "dpo",
            "--data-dir",
            str(tmp_path / "data"),
            "--database",
            f"sqlite:///{tmp_path / 'engine.db'}",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["tasks"], report["subjectDigest"]) == (1, subject_digest(SUBJECT))
    assert files_holding(tmp_path, EMAIL) == []
    assert main(["erase", "--subject", "", "--data-dir", str(tmp_path / "data")]) == 2
