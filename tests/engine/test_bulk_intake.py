"""A source's batch (``Engine.submit_batch``): the rows ``submit_many`` writes for the same submissions, the same
deduplication and refusals, and the general intake where the batch path does not apply."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from crds.workflow import WorkflowSpec
from engine import Accepted, Engine, IdempotencyMismatchError, Submission, TaskState, WorkflowNotFoundError
from engine.errors import InvalidRequestError
from engine.runtime.bulk import Batch, BatchOutcome, Taken
from engine.store.schema import approvals, events, step_runs, tasks
from tests.engine.conftest import EngineFactory, fast_worker, wait_done

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FLOW = {
    "inputSchema": {"type": "object", "required": ["n"]},
    "sla": {"deadline": "1h"},
    "steps": [{"name": "r", "type": "rules", "rules": {"set": {"double": "input.n * 2"}}}],
}
APPROVAL_FIRST = {
    "steps": [
        {"name": "ok", "type": "approval", "approval": {"approvers": {"roles": ["approver"]}, "expiry": "1h"}},
        {"name": "r", "type": "rules", "rules": {"set": {"x": "1"}}},
    ]
}


class RefusedError(Exception):
    pass


def batch(inputs: Sequence[Any], keys: Sequence[str], **extra: Any) -> Batch:
    return Batch(
        tenant="acme",
        workflow="wf",
        inputs=inputs,
        keys=keys,
        trace_contexts=extra.pop("trace_contexts", [None] * len(inputs)),
        **extra,
    )


def taken(outcomes: Sequence[BatchOutcome]) -> list[Taken]:
    assert all(isinstance(o, Taken) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, Taken)]


def stored(engine: Engine, tenant: str) -> dict[str, list[dict[str, Any]]]:
    """The rows the intake wrote for ``tenant``'s tasks, with ids (which differ by construction) and the tenant
    replaced by names that do not."""
    with engine.db.read() as conn:
        task_rows = [dict(r._mapping) for r in conn.execute(sa.select(tasks).where(tasks.c.tenant == tenant))]
        ids = [row["id"] for row in task_rows]
        of_tasks: dict[str, list[dict[str, Any]]] = {
            table.name: [dict(r._mapping) for r in conn.execute(sa.select(table).where(table.c.task_id.in_(ids)))]
            for table in (step_runs, approvals, events)
        }
    task_rows.sort(key=lambda row: row["idempotency_key"])
    names = {row["id"]: f"task-{n}" for n, row in enumerate(task_rows)} | {tenant: "tenant"}
    for row in of_tasks["step_runs"]:
        names[row["id"]] = f"run-of-{names[row['task_id']]}"

    def plain(row: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in row.items():
            if key == "seq" and "type" in row and "payload" in row:
                continue  # the outbox's insertion order
            text = value
            if isinstance(text, dict) and "approvalId" in text:
                text = {**text, "approvalId": None}  # the approval's own id
            if isinstance(text, str):
                for real, name in names.items():
                    text = text.replace(real, name)
            out[key] = text
        if "step_run_id" in row or ("payload" in row and "type" in row):
            out.pop("id")  # approvals' and events' own ids
        return out

    return {"tasks": [plain(row) for row in task_rows]} | {
        name: sorted((plain(row) for row in table_rows), key=str) for name, table_rows in of_tasks.items()
    }


@pytest.mark.parametrize("flow", [FLOW, APPROVAL_FIRST], ids=["rules-first", "approval-first"])
def test_the_rows_are_those_submit_many_writes(make_engine: EngineFactory, db_url: str, flow: dict[str, Any]) -> None:
    inputs = [{"n": n, "text": "é" * 10 * n} for n in range(5)]
    keys = [f"topic/0/{n}" for n in range(5)]
    traces = [None, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None, None, None]
    engine = make_engine(db_url, clock=lambda: NOW, inline_limit=60)  # the last inputs are blobs
    engine.register_workflow("wf", flow)
    made = engine.submit_batch(
        Batch(tenant="acme", workflow="wf", inputs=inputs, keys=keys, trace_contexts=traces, priority="high")
    )
    assert all(t.created for t in taken(made))
    outcomes = engine.submit_many(
        [
            Submission(tenant="other", workflow="wf", input=i, idempotency_key=k, trace_context=t, priority="high")
            for i, k, t in zip(inputs, keys, traces, strict=True)
        ]
    )
    assert all(isinstance(o, Accepted) for o in outcomes)
    assert stored(engine, "acme") == stored(engine, "other")
    assert len(stored(engine, "acme")["tasks"]) == 5


def test_repeated_keys_give_the_earlier_tasks_and_other_inputs_a_mismatch(engine: Engine) -> None:
    engine.register_workflow("wf", FLOW)
    first = taken(engine.submit_batch(batch([{"n": 1}, {"n": 2}], ["k1", "k2"])))
    again = engine.submit_batch(
        batch([{"n": 1}, {"n": 3}, {"n": 9}, {"n": 4}, {"n": 4}], ["k1", "k3", "k2", "k4", "k4"])
    )
    same, new, mismatch, fourth, fourth_again = again
    assert same == Taken(first[0].task_id, False)
    assert isinstance(new, Taken)
    assert new.created
    assert isinstance(mismatch, IdempotencyMismatchError)
    assert mismatch.fields["task_id"] == first[1].task_id
    assert isinstance(fourth, Taken)
    assert fourth.created
    assert fourth_again == Taken(fourth.task_id, False)  # a key twice in one batch: one task
    with engine.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar_one() == 4
        assert conn.execute(sa.select(sa.func.count()).select_from(step_runs)).scalar_one() == 4
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one() == 4


def test_refusals_are_outcomes_and_write_nothing(engine: Engine) -> None:
    engine.register_workflow("wf", FLOW)

    def check(value: Any, version: str, spec: WorkflowSpec) -> None:
        if "n" not in value:
            raise RefusedError(f"no n for {version}")

    outcomes = engine.submit_batch(batch([{"n": 1}, {"m": 1}, {"n": {1, 2}}], ["a", "b", "c"], check=check))
    assert isinstance(outcomes[0], Taken)
    assert isinstance(outcomes[1], RefusedError)
    assert isinstance(outcomes[2], InvalidRequestError)

    def closed(version: str, spec: WorkflowSpec) -> None:
        raise RefusedError("closed")

    outcomes = engine.submit_batch(batch([{"n": 2}, {"m": 2}], ["d", "e"], check=check, validate=closed))
    assert [str(o) for o in outcomes] == ["closed", f"no n for {engine.workflow('wf')[0]}"]
    missing = engine.submit_batch(Batch(tenant="acme", workflow="nope", inputs=[{}], keys=["x"], trace_contexts=[None]))
    assert isinstance(missing[0], WorkflowNotFoundError)
    assert isinstance(engine.submit_batch(batch([{"n": 1}], ["f"], priority="urgent"))[0], InvalidRequestError)
    with engine.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar_one() == 1


def test_a_denied_tenant_goes_through_the_general_intake(make_engine: EngineFactory, db_url: str) -> None:
    allowed: Callable[[str], frozenset[str] | None] = lambda workflow: frozenset({"globex"})  # noqa: E731
    engine = make_engine(db_url, tenants=allowed)
    engine.register_workflow("wf", FLOW)
    outcomes = engine.submit_batch(batch([{"n": 1}, {"n": 2}], ["a", "b"]))
    assert [getattr(o, "type", None) for o in outcomes] == ["tenant-denied", "tenant-denied"]
    denials = [record for record in engine.audit.records() if record.decision == "deny"]
    assert len(denials) == 2  # the general intake's records


def test_batch_tasks_run(engine: Engine) -> None:
    engine.register_workflow("wf", FLOW)
    [made] = taken(engine.submit_batch(batch([{"n": 21}], ["k"])))
    with fast_worker(engine):
        done = wait_done(engine, "acme", made.task_id)
    assert (done.state, done.vars) == (TaskState.SUCCEEDED, {"double": 42})
