"""Per-step overhead of the durable engine vs one durable commit of the same store (SQLite file, PostgreSQL).

Subject: a workflow of N ``rules`` steps (each sets one variable with a constant CEL expression, so the engine's
own work dominates: claiming with a lease, loading the task, recording the result and the next step, events),
run by one in-process worker with its default settings (``WorkerConfig()``). A sample is one task's wall time,
from its submission to its completion as the store records them (``finished_at - created_at``), divided by N.

Baseline: one INSERT of a small row plus COMMIT, through the same SQLAlchemy engine (same connection settings:
WAL, ``synchronous``, ``BEGIN IMMEDIATE`` on SQLite) into a table of the same database, on a connection kept
open for the sample; a sample is the mean of a batch. Rounds alternate baseline batches and tasks.

Stores:
- SQLite file with the engine's default ``sqlite_synchronous="FULL"``: every commit is fsynced on both sides.
- PostgreSQL, a throwaway cluster (``tests.fixtures.postgres.running_postgres``) as the test fixture configures
  it: ``fsync=off``, ``synchronous_commit=off``, so neither side's commits are durable here; both use the same
  server, so the ratio compares like with like, but it measures the engine against a cheap commit.
- PostgreSQL again, after ``ALTER SYSTEM SET fsync=on, synchronous_commit=on, full_page_writes=on`` and a
  reload: durable commits on both sides.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

from benchmarks.harness import Comparison
from benchmarks.servers import scratch_dir, smoke
from engine import Engine
from engine.store.database import _WRITE

WORKFLOW = "bench-steps"
TENANT = "bench"

_metadata = sa.MetaData()
bench_commits = sa.Table(
    "bench_commits",
    _metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("payload", sa.String(64), nullable=False),
)


@dataclass(frozen=True)
class Sizes:
    steps: int = 30
    rounds: int = 10
    commits_per_round: int = 50
    warmup_tasks: int = 1

    @classmethod
    def default(cls) -> Sizes:
        if smoke():
            return cls(steps=4, rounds=2, commits_per_round=5, warmup_tasks=1)
        return cls()


def spec(steps: int) -> dict[str, Any]:
    return {"steps": [{"name": f"s{i:02d}", "type": "rules", "rules": {"set": {"last": str(i)}}} for i in range(steps)]}


def _task_seconds_per_step(engine: Engine, steps: int) -> float:
    task = engine.submit(TENANT, WORKFLOW, {"n": 1})
    # The time comes from the store's timestamps; polling slowly keeps the poller's reads out of the way.
    done = engine.wait(TENANT, task.id, timeout=120, poll_interval=0.05)
    if done.state != "succeeded" or done.finished_at is None:
        raise RuntimeError(f"benchmark task ended {done.state} at {done.current_step}: {done.error}")
    return (done.finished_at - done.created_at).total_seconds() / steps


@contextlib.contextmanager
def _writer(engine: Engine) -> Iterator[sa.Connection]:
    """A connection of the store's own SQLAlchemy engine, opening write transactions as the engine does."""
    with engine.db.engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        yield conn


def _commit_seconds(engine: Engine, count: int) -> float:
    with _writer(engine) as conn:
        start = time.perf_counter()
        for _ in range(count):
            with conn.begin():
                conn.execute(sa.insert(bench_commits).values(id=uuid.uuid4().hex, payload="a small row"))
        return (time.perf_counter() - start) / count


def measure(name: str, db_url: str, data_dir: Path, sizes: Sizes) -> Comparison:
    with Engine(db_url, data_dir=data_dir) as engine:
        engine.register_workflow(WORKFLOW, spec(sizes.steps))
        _metadata.create_all(engine.db.engine)
        subject_s: list[float] = []
        baseline_s: list[float] = []
        with engine.worker():
            for _ in range(sizes.warmup_tasks):
                _task_seconds_per_step(engine, sizes.steps)
            _commit_seconds(engine, sizes.commits_per_round)
            for _ in range(sizes.rounds):
                baseline_s.append(_commit_seconds(engine, sizes.commits_per_round))
                subject_s.append(_task_seconds_per_step(engine, sizes.steps))
    return Comparison(
        f"{name}: engine time per rules step ({sizes.steps}-step task) vs one INSERT+COMMIT", subject_s, baseline_s
    )


def _sqlite(sizes: Sizes) -> Comparison:
    with scratch_dir("aiplane-bench-engine-") as work:
        return measure("sqlite file, synchronous=FULL", f"sqlite:///{work / 'engine.db'}", work, sizes)


def _postgres(sizes: Sizes) -> list[Comparison]:
    from tests.fixtures.postgres import running_postgres

    results: list[Comparison] = []
    with scratch_dir("aiplane-bench-engine-pg-") as work, running_postgres() as pg:
        for durable in (False, True):
            schema = "durable" if durable else "fixture"
            with psycopg.connect(pg.libpq_dsn, autocommit=True) as conn:
                if durable:
                    for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                        conn.execute(f"ALTER SYSTEM SET {setting} = on")
                    conn.execute("SELECT pg_reload_conf()")
                conn.execute(f'CREATE SCHEMA "{schema}"')
            url = sa.make_url(pg.dsn).update_query_dict({"options": f"-csearch_path={schema}"})
            label = (
                "postgresql, fsync=on synchronous_commit=on"
                if durable
                else "postgresql, fsync=off synchronous_commit=off (test fixture; commits not durable)"
            )
            results.append(measure(label, url.render_as_string(hide_password=False), work / schema, sizes))
    return results


def run(sizes: Sizes | None = None, *, postgres: bool = True) -> list[Comparison]:
    sizes = sizes or Sizes.default()
    results = [_sqlite(sizes)]
    if postgres:
        results += _postgres(sizes)
    return results
