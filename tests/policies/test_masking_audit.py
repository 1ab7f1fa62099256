"""Masking decisions in the audit log, through the real engine on SQLite and PostgreSQL: one record per masked task
input and per masked step attempt, in the transaction that stores the masked data, saying which entities at which
paths, how and by which Policies, never the values; the chain still verifies (``aiplane audit verify``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiplane.cli import main
from crds.policy import Policy
from engine import Engine, Submission, TaskState
from policies.audit import Record
from policies.effective import Target
from policies.masking import WorkflowMasking
from policies.sources import PolicySet
from tests.engine.conftest import Downstream, Reply, fast_worker, wait_done
from tests.policies.test_pii_engine import ANSWER, CLAIM, KEYS, SECRETS, models

CLAIMS = Target("Workflow", "claims", "default", {"team": "claims"})
WORKFLOW = {
    "steps": [
        {
            "name": "extract",
            "type": "model",
            "model": {"name": "m", "api": "extract", "input": {"text": "input.claimId"}},
        }
    ]
}


def _policies() -> PolicySet:
    return PolicySet(
        [
            Policy.model_validate(
                {
                    "metadata": {"name": "claims-pii", "namespace": "default", "generation": 4},
                    "spec": {
                        "selector": {"matchLabels": {"team": "claims"}},
                        "pii": {
                            "entities": ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN"],
                            "fields": ["input.claimant.policyRef"],
                            "action": "tokenize",
                            "unmaskRoles": ["auditor"],
                        },
                    },
                }
            ),
            Policy.model_validate(
                {
                    "metadata": {"name": "names", "namespace": "default", "generation": 1},
                    "spec": {"selector": {"matchLabels": {"team": "claims"}}, "pii": {"entities": ["PERSON"]}},
                }
            ),
        ]
    )


@pytest.fixture
def masked_engine(db_url: str, tmp_path: Path) -> Iterator[tuple[Engine, Downstream]]:
    downstream = Downstream()
    downstream.script("/models/m/extract", Reply(body=ANSWER))
    policies = _policies()
    engine = Engine(
        db_url,
        data_dir=tmp_path / "data",
        model_resolver=models(downstream),
        sqlite_synchronous="NORMAL",
        pii=WorkflowMasking(lambda workflow: policies.effective(CLAIMS).pii if workflow == "claims" else None, KEYS),
    )
    engine.register_workflow("claims", WORKFLOW)
    engine.register_workflow("open", WORKFLOW)
    yield engine, downstream
    engine.close()
    downstream.close()


def _masks(engine: Engine) -> list[Record]:
    return [r for r in engine.audit.records() if (r.kind, r.decision) == ("policy", "mask")]


def test_each_masked_input_and_step_is_recorded_without_its_values(masked_engine: tuple[Engine, Downstream]) -> None:
    engine, _ = masked_engine
    with fast_worker(engine):
        task = wait_done(engine, "acme", engine.submit("acme", "claims", CLAIM).id)
    assert task.state == TaskState.SUCCEEDED, task.error
    records = {r.subject: r for r in _masks(engine)}
    assert set(records) == {f"task/{task.id}/input", f"task/{task.id}/step/extract/attempt/1"}

    given = records[f"task/{task.id}/input"]
    assert (given.tenant, given.actor) == ("acme", "engine")
    details = json.loads(given.details)
    # The strictest action of the two Policies (redact) and both of them, by version.
    assert details["action"] == "redact"
    assert details["policies"] == ["default/claims-pii@4", "default/names@1"]
    assert details["workflow"] == "claims"
    assert details["entities"] == {
        "CREDIT_CARD": 1,
        "EMAIL_ADDRESS": 1,
        "FIELD": 1,
        "IBAN_CODE": 1,
        "PERSON": 1,
        "PHONE_NUMBER": 1,
        "US_SSN": 1,
    }
    assert {"input.claimant.email", "input.claimant.policyRef", "input.claimant.name", "input.description"} <= set(
        details["paths"]
    )
    step = json.loads(records[f"task/{task.id}/step/extract/attempt/1"].details)
    assert step["entities"] == {"EMAIL_ADDRESS": 1, "PERSON": 1}
    assert set(step["paths"]) == {"steps.extract.adjuster.email", "steps.extract.adjuster.name"}

    everything = "".join(r.details + r.subject for r in engine.audit.records())
    for secret in SECRETS:
        assert secret not in everything
    assert engine.audit.verify().ok


def test_a_batch_records_only_what_it_masked_and_nothing_twice(
    masked_engine: tuple[Engine, Downstream], db_url: str
) -> None:
    engine, _ = masked_engine
    plain: dict[str, Any] = {"claimId": "C-1", "amount": 3}
    outcomes = engine.submit_many(
        [
            Submission(tenant="acme", workflow="claims", input=CLAIM, idempotency_key="k-1"),
            Submission(tenant="acme", workflow="claims", input=plain, idempotency_key="k-2"),
            Submission(tenant="acme", workflow="open", input=CLAIM, idempotency_key="k-3"),  # no Policy
            Submission(tenant="globex", workflow="claims", input=CLAIM, idempotency_key="k-1"),
        ]
    )
    ids = [o.task.id for o in outcomes]  # type: ignore[union-attr]
    assert [r.subject for r in _masks(engine)] == [f"task/{ids[0]}/input", f"task/{ids[3]}/input"]
    assert [r.tenant for r in _masks(engine)] == ["acme", "globex"]
    # The same message again (a Kafka source reading a batch again): its task comes back, no second record.
    again = engine.submit_many([Submission(tenant="acme", workflow="claims", input=CLAIM, idempotency_key="k-1")])
    assert again[0].task.id == ids[0]  # type: ignore[union-attr]
    assert len(_masks(engine)) == 2
    assert engine.audit.verify().ok
    assert main(["audit", "verify", "--database", db_url]) == 0
