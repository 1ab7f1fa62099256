"""Retention purge through the real engine: a finished task's data past its Policy's period is deleted per data
class and workflow; fresh data, running tasks and ungoverned workflows keep theirs; the audit log is pruned to
the longest audit period and stays verifiable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from aiplane.cli import main
from crds.policy import Policy
from engine import Engine, TaskState
from engine.runtime.intake import Submission
from engine.store.purge import Purged, Retention, purge
from engine.store.schema import events, step_runs, tasks
from policies.effective import Target
from policies.retention import audit_period, retention_for, shared_period
from policies.sources import PolicySet
from tests.engine.conftest import fast_worker, wait_done
from tests.fixtures.clocks import SettableClock
from tests.fixtures.polling import assert_eventually

START = datetime(2026, 1, 1, tzinfo=UTC)
RULES = {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"seen": "input.name"}}}]}
BIG = "x" * 2048  # over the inline limit below: the input goes to a blob


def policy(name: str, labels: dict[str, str], **retention: str) -> Policy:
    return Policy.model_validate(
        {
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"kinds": ["Workflow"], "matchLabels": labels}, "retention": retention},
        }
    )


POLICIES = [
    policy("claims", {"team": "claims"}, inputs="30d", results="60d", events="30d", audit="365d"),
    policy("claims-strict", {"team": "claims"}, inputs="7d", audit="400d"),
]
TARGETS = {
    "claims": Target("Workflow", "claims", "default", {"team": "claims"}),
    "kept": Target("Workflow", "kept", "default", {"team": "other"}),
}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Engine, SettableClock[datetime]]]:
    clock = SettableClock(START)
    engine = Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        clock=clock,
        inline_limit=1024,
        sqlite_synchronous="NORMAL",
    )
    engine.register_workflow("claims", RULES)
    engine.register_workflow("kept", RULES)
    yield engine, clock
    engine.close()


def run(engine: Engine, workflow: str, input: Any) -> str:
    with fast_worker(engine):
        task = engine.submit("acme", workflow, input)
        assert wait_done(engine, "acme", task.id).state == TaskState.SUCCEEDED
        engine.relay.drain()
    return task.id


def test_retention_periods_combine() -> None:
    periods = retention_for(PolicySet(POLICIES).effective, TARGETS)
    assert periods("claims") == {
        "inputs": timedelta(days=7),
        "results": timedelta(days=60),
        "events": timedelta(days=30),
        "audit": timedelta(days=400),
    }
    assert periods("kept") == {}
    assert audit_period(POLICIES) == timedelta(days=400)
    assert shared_period(POLICIES, "events") == timedelta(days=30)
    assert audit_period([]) is None


def test_purge_deletes_expired_data_per_class_and_keeps_fresh(setup: tuple[Engine, SettableClock[datetime]]) -> None:
    engine, clock = setup
    old = run(engine, "claims", {"name": "old", "blob": BIG})
    old_kept = run(engine, "kept", {"name": "ungoverned"})
    engine.audit.append("test", "first", "noted")
    clock.now = START + timedelta(days=20)
    fresh = run(engine, "claims", {"name": "fresh"})
    blobs = list((engine.codec.blobs.root).rglob("*"))  # type: ignore[attr-defined]
    assert any(p.is_file() for p in blobs)

    clock.now = START + timedelta(days=40)
    periods = retention_for(PolicySet(POLICIES).effective, TARGETS)
    purged = purge(engine.db, engine.codec, periods, now=clock.now, audit_period=audit_period(POLICIES))
    # 40 days on: both claims tasks' inputs (7d), the old one's events (30d); results (60d) stay.
    assert (purged.inputs, purged.results, purged.blobs) == (2, 0, 1)
    assert purged.events > 0
    assert purged.workflows == ["claims"]

    with engine.db.read() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(tasks))}
        event_tasks = {r.task_id for r in conn.execute(sa.select(events.c.task_id))}
    assert (rows[old].input, rows[old].input_ref, rows[fresh].input) == (None, None, None)
    assert rows[old].result is not None
    assert rows[old_kept].input is not None  # no Policy governs "kept"
    assert old not in event_tasks
    assert {fresh, old_kept} <= event_tasks
    assert not any(p.is_file() for p in engine.codec.blobs.root.rglob("*"))  # type: ignore[attr-defined]
    assert engine.get("acme", old).state == TaskState.SUCCEEDED  # the task itself is still there

    clock.now = START + timedelta(days=70)
    purged = purge(engine.db, engine.codec, periods, now=clock.now)
    assert purged.results == 1  # the old one only: the fresh one finished 50 days ago
    with engine.db.read() as conn:
        query = sa.select(step_runs.c.task_id, step_runs.c.output).where(step_runs.c.task_id.in_([old, fresh]))
        outputs = {row.task_id: row.output for row in conn.execute(query)}
    assert outputs[old] is None
    assert outputs[fresh] is not None
    task = engine.get("acme", old)
    assert (task.result, task.vars) == (None, {})


def test_purge_prunes_the_audit_log_to_the_longest_period(setup: tuple[Engine, SettableClock[datetime]]) -> None:
    engine, clock = setup
    engine.audit.append("test", "old", "noted")
    clock.now = START + timedelta(days=300)
    engine.audit.append("test", "recent", "noted")
    clock.now = START + timedelta(days=401)
    periods = retention_for(PolicySet(POLICIES).effective, TARGETS)
    purged = purge(
        engine.db, engine.codec, periods, now=clock.now, audit_period=audit_period(POLICIES), audit_log=engine.audit
    )
    assert purged.audit == 1
    assert next(r.subject for r in engine.audit.records()) == "recent"
    assert engine.audit.verify().ok


def test_running_tasks_keep_their_data(setup: tuple[Engine, SettableClock[datetime]]) -> None:
    engine, clock = setup
    task = engine.submit("acme", "claims", {"name": "waiting"})  # no worker: stays queued
    clock.now = START + timedelta(days=400)
    purge(engine.db, engine.codec, retention_for(PolicySet(POLICIES).effective, TARGETS), now=clock.now)
    assert engine.get("acme", task.id).input == {"name": "waiting"}


def test_workers_purge_periodically(tmp_path: Path) -> None:
    clock = SettableClock(START)
    seen: list[Purged] = []
    periods = retention_for(PolicySet(POLICIES).effective, TARGETS)
    with Engine(
        f"sqlite:///{tmp_path / 'engine.db'}",
        data_dir=tmp_path / "data",
        clock=clock,
        sqlite_synchronous="NORMAL",
        retention=Retention(periods, audit=lambda: audit_period(POLICIES), after=seen.append),
    ) as engine:
        engine.register_workflow("claims", RULES)
        task_id = run(engine, "claims", {"name": "old"})
        clock.now = START + timedelta(days=10)
        with fast_worker(engine, retention_interval=0.05):

            def purged() -> None:
                assert engine.get("acme", task_id).input is None

            assert_eventually(purged, timeout=10)
        assert any(p.inputs == 1 for p in seen)  # the hook saw the purge (the first ones, at the start, found nothing)


def test_aiplane_purge_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    policy_doc = {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Policy",
        **POLICIES[1].model_dump(by_alias=True, exclude_none=True),
    }
    workflow_doc = {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "claims", "labels": {"team": "claims"}},
        "spec": RULES,
    }
    (manifests / "all.yaml").write_text(yaml.safe_dump_all([policy_doc, workflow_doc]))
    with Engine(
        f"sqlite:///{tmp_path / 'engine.db'}", data_dir=tmp_path / "data", sqlite_synchronous="NORMAL"
    ) as engine:
        engine.register_workflow("claims", RULES)
        task_id = run(engine, "claims", {"name": "a week and more ago"})
        with engine.db.write() as conn:  # finished 8 days ago (the command purges at the real now)
            conn.execute(sa.update(tasks).values(finished_at=datetime.now(UTC) - timedelta(days=8)))
    assert (
        main(
            [
                "purge",
                str(manifests),
                "--data-dir",
                str(tmp_path / "data"),
                "--database",
                f"sqlite:///{tmp_path / 'engine.db'}",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["inputs"] == 1
    with Engine(f"sqlite:///{tmp_path / 'engine.db'}", data_dir=tmp_path / "data") as engine:
        assert engine.get("acme", task_id).input is None


@pytest.mark.integration
def test_purge_and_erase_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    clock = SettableClock(START)
    periods = retention_for(PolicySet(POLICIES).effective, TARGETS)
    with Engine(pg_url, data_dir=tmp_path / "data", clock=clock, inline_limit=1024) as engine:
        engine.register_workflow("claims", RULES)
        old = run(engine, "claims", {"name": "old", "blob": BIG})
        [erasable] = engine.submit_many(
            [Submission(tenant="acme", workflow="claims", input={"name": "e"}, annotations={"subject": "s-1"})]
        )
        clock.now = START + timedelta(days=61)
        purged = purge(
            engine.db, engine.codec, periods, now=clock.now, audit_period=audit_period(POLICIES), audit_log=engine.audit
        )
        assert (purged.inputs, purged.results, purged.blobs) == (1, 1, 1)
        task = engine.get("acme", old)
        assert (task.input, task.result, task.vars) == (None, None, {})
        erased = engine.erase("s-1", actor="dpo")
        assert erased.tasks == (erasable.task.id,)  # type: ignore[union-attr]
        assert engine.audit.verify().ok
