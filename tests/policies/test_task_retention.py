"""A task's own retention (``POST /v1/tasks`` ``policy.retention``): once it has passed since the task finished,
the purge removes the task's data (input, result, variables, step outputs, published events, payload logs, blobs)
as a Policy period would; a sibling without it keeps everything; it only narrows what the Policies keep, so a
shorter Policy period still goes first. Real engine on SQLite and PostgreSQL, on a controllable clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api import GatewaySettings, create_api_key, create_app
from crds.policy import Policy
from engine import Engine, TaskState
from engine.runtime.intake import Accepted, Submission
from engine.store.blobs import DatabaseBlobStore
from engine.store.migrate import downgrade, upgrade
from engine.store.purge import Retention
from engine.store.schema import blobs, events, payload_logs, step_runs, tasks
from policies.effective import Target
from policies.retention import retention_for
from policies.sources import PolicySet
from tests.engine.conftest import fast_worker, wait_done
from tests.fixtures.clocks import SettableClock
from tests.fixtures.polling import assert_eventually

Setup = tuple[Engine, SettableClock[datetime]]

START = datetime(2026, 1, 1, tzinfo=UTC)
RULES = {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"seen": "input.name"}}}]}
BIG = "x" * 2048  # over the inline limit below: the input goes to a blob


def _engine(url: str, data_dir: Path, clock: SettableClock[datetime], retention: Retention | None = None) -> Engine:
    engine = Engine(url, data_dir=data_dir, clock=clock, inline_limit=1024, retention=retention)
    engine.register_workflow("claims", RULES)
    return engine


@pytest.fixture
def setup(db_url: str, tmp_path: Path) -> Iterator[Setup]:
    clock = SettableClock(START)
    engine = _engine(db_url, tmp_path / "data", clock)
    yield engine, clock
    engine.close()


def run(engine: Engine, input: Any, retention: str | None = None) -> str:
    annotations = {"retention": retention, "privacy": "claims"} if retention is not None else None
    [outcome] = engine.submit_many([Submission(tenant="acme", workflow="claims", input=input, annotations=annotations)])
    assert isinstance(outcome, Accepted), outcome
    with fast_worker(engine):
        assert wait_done(engine, "acme", outcome.task.id).state == TaskState.SUCCEEDED
        engine.relay.drain()
    engine.payload_logs.keep({"tenant": "acme", "workflow": "claims", "task_id": outcome.task.id, "input": input})
    return outcome.task.id


def kept(engine: Engine, task_id: str) -> dict[str, Any]:
    """What the store still keeps of a task."""
    with engine.db.read() as conn:
        row = conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).one()
        outputs = conn.execute(
            sa.select(step_runs.c.output, step_runs.c.output_ref).where(step_runs.c.task_id == task_id)
        ).all()
        published = conn.execute(
            sa.select(sa.func.count()).where(events.c.task_id == task_id, events.c.published_at.is_not(None))
        ).scalar_one()
        logs = conn.execute(sa.select(sa.func.count()).where(payload_logs.c.task_id == task_id)).scalar_one()
    return {
        "input": row.input is not None or row.input_ref is not None,
        "result": row.result is not None or row.result_ref is not None or row.vars != {},
        "outputs": any(o.output is not None or o.output_ref is not None for o in outputs),
        "events": published > 0,
        "payloadLogs": logs > 0,
        "state": row.state,
    }


EVERYTHING = {"input": True, "result": True, "outputs": True, "events": True, "payloadLogs": True, "state": "succeeded"}
NOTHING = {"input": False, "result": False, "outputs": False, "events": False, "payloadLogs": False}


def blob_files(engine: Engine) -> int:
    """Blobs kept: files under the data dir, or rows of the store's own blob table (PostgreSQL)."""
    if isinstance(engine.codec.blobs, DatabaseBlobStore):
        with engine.db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(blobs)).scalar_one())
    return sum(p.is_file() for p in engine.codec.blobs.root.rglob("*"))  # type: ignore[attr-defined]


def test_a_tasks_own_retention_purges_it_and_leaves_its_sibling(setup: Setup) -> None:
    engine, clock = setup
    short = run(engine, {"name": "short", "blob": BIG}, retention="1h")
    sibling = run(engine, {"name": "sibling"})
    assert blob_files(engine) == 1

    clock.now = START + timedelta(minutes=59)
    assert engine.purge().own_retention == 0
    assert kept(engine, short) == EVERYTHING

    clock.now = START + timedelta(hours=1, seconds=1)
    purged = engine.purge()
    assert (purged.own_retention, purged.inputs, purged.results, purged.blobs) == (1, 1, 1, 1)
    assert purged.events > 0
    assert purged.payload_logs == 1
    assert kept(engine, short) == {**NOTHING, "state": "succeeded"}  # the task itself stays, as under a Policy
    assert kept(engine, sibling) == EVERYTHING
    assert blob_files(engine) == 0
    assert engine.purge().own_retention == 0  # a purged task is not purged, nor counted, again


def test_it_never_extends_a_shorter_policy_period(db_url: str, tmp_path: Path) -> None:
    clock = SettableClock(START)
    policy = Policy.model_validate(
        {
            "metadata": {"name": "claims", "namespace": "default"},
            "spec": {"selector": {"kinds": ["Workflow"]}, "retention": {"inputs": "30m", "results": "7d"}},
        }
    )
    periods = retention_for(PolicySet([policy]).effective, {"claims": Target("Workflow", "claims")})
    with _engine(db_url, tmp_path / "data", clock, Retention(periods)) as engine:
        longer = run(engine, {"name": "asks 30d"}, retention="30d")
        shorter = run(engine, {"name": "asks 1h"}, retention="1h")

        clock.now = START + timedelta(minutes=31)  # the Policy's 30m inputs period beats the task's 30 days
        purged = engine.purge()
        assert (purged.inputs, purged.own_retention) == (2, 0)
        assert kept(engine, longer) == {**EVERYTHING, "input": False}

        clock.now = START + timedelta(hours=2)  # the task's 1h beats the Policy's 7d results period
        purged = engine.purge()
        assert purged.own_retention == 1
        assert kept(engine, shorter) == {**NOTHING, "state": "succeeded"}
        assert kept(engine, longer) == {**EVERYTHING, "input": False}


def test_workers_purge_by_a_tasks_own_retention_without_any_policy(
    setup: Setup,
) -> None:
    engine, clock = setup
    task_id = run(engine, {"name": "short"}, retention="10m")
    clock.now = START + timedelta(minutes=11)
    with fast_worker(engine, retention_interval=0.05):

        def purged() -> None:
            assert not kept(engine, task_id)["input"]

        assert_eventually(purged, timeout=10)


def test_submitted_through_the_gateway(tmp_path: Path) -> None:
    clock = SettableClock(START)
    with _engine(f"sqlite:///{tmp_path / 'engine.db'}", tmp_path / "data", clock) as engine:
        key = create_api_key(engine, "acme", "alice", ["submitter"])
        with TestClient(create_app(engine, GatewaySettings())) as client, fast_worker(engine):
            body = {"workflow": {"name": "claims"}, "input": {"name": "a"}, "policy": {"retention": "2h"}}
            response = client.post("/v1/tasks", json=body, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 202, response.text
            task_id = response.json()["id"]
            wait_done(engine, "acme", task_id)
        clock.now = START + timedelta(hours=1)
        engine.purge()
        assert kept(engine, task_id)["input"]
        clock.now = START + timedelta(hours=2, seconds=1)
        assert engine.purge().own_retention == 1
        assert not kept(engine, task_id)["input"]


def test_tasks_finished_before_the_migration_get_their_purge_time(
    setup: Setup,
) -> None:
    engine, clock = setup
    task_id = run(engine, {"name": "old"}, retention="1h")
    sibling = run(engine, {"name": "sibling"})
    downgrade(engine.db, "0010")  # as a store written before tasks carried purge_after
    upgrade(engine.db)
    with engine.db.read() as conn:
        after = {row.id: row.purge_after for row in conn.execute(sa.select(tasks.c.id, tasks.c.purge_after))}
    assert after == {task_id: START + timedelta(hours=1), sibling: None}
    clock.now = START + timedelta(hours=2)
    assert engine.purge().own_retention == 1
