"""Payload logging: a sampled share of tasks logs each step's input and output, masked like everything else."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from engine import Engine, InMemorySink, StaticConnectorResolver, TaskState
from policies.masking import WorkflowMasking
from policies.payloads import LOGGER, PayloadLog, sampled
from tests.engine.conftest import fast_worker, wait_done
from tests.fixtures.downstream import Downstream, Reply
from tests.policies.test_pii_engine import ANSWER, CLAIM, KEYS, POLICY, SECRETS, SINK, WORKFLOW, models


@pytest.fixture(autouse=True)
def extractor(downstream: Downstream) -> None:
    downstream.script("/models/m/extract", Reply(body=ANSWER))


def test_sampling_is_by_task_and_close_to_the_rate() -> None:
    ids = [f"task-{i}" for i in range(4000)]
    share = sum(sampled(i, 0.25) for i in ids) / len(ids)
    assert 0.22 < share < 0.28
    assert [sampled(i, 0.25) for i in ids[:50]] == [sampled(i, 0.25) for i in ids[:50]]
    assert not any(sampled(i, 0.0) for i in ids[:50])
    assert all(sampled(i, 1.0) for i in ids[:50])


def test_sampled_tasks_log_every_step_masked(
    tmp_path: Path, downstream: Downstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        model_resolver=models(downstream),
        connector_resolver=StaticConnectorResolver(SINK),
        sink=InMemorySink(),
        sqlite_synchronous="NORMAL",
        pii=WorkflowMasking(lambda workflow: POLICY, KEYS),
        payloads=PayloadLog(lambda workflow: 1.0 if workflow == "claims" else None),
    ) as engine:
        engine.register_workflow("claims", WORKFLOW)
        engine.register_workflow("quiet", WORKFLOW)
        with fast_worker(engine):
            task = wait_done(engine, "acme", engine.submit("acme", "claims", CLAIM).id)
            quiet = wait_done(engine, "acme", engine.submit("acme", "quiet", CLAIM).id)
        kept = engine.payload_logs.records(tenant="acme")
    assert task.state == quiet.state == TaskState.SUCCEEDED
    # The records are kept in the store (where retention and erasure reach them), masked; the log lines say so
    # without the payloads.
    assert [(r["task_id"], r["step"]) for r in kept] == [(task.id, "extract"), (task.id, "publish")]
    assert kept[0]["input"]["claimant"]["email"].startswith("<EMAIL_ADDRESS:t:")
    logged = [r for r in caplog.records if r.name == LOGGER]
    assert [(r.__dict__["task_id"], r.__dict__["step"], r.__dict__["kept"]) for r in logged] == [
        (task.id, "extract", True),
        (task.id, "publish", True),
    ]
    assert not any("input" in r.__dict__ or "output" in r.__dict__ for r in logged)
    text = "\n".join(str(r.__dict__) for r in logged) + json.dumps(kept)
    for secret in SECRETS:
        assert secret not in text
