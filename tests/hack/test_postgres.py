"""The throwaway PostgreSQL from ``tests/fixtures/postgres.py`` serves both drivers the engine uses, and its row
locks behave as the engine's claim query needs: a worker's ``FOR UPDATE SKIP LOCKED`` passes over rows another
worker holds instead of waiting for them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa

from tests.fixtures.postgres import Postgres

CLAIM = "SELECT id FROM {table} WHERE state = 'ready' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"


def _table_name(prefix: str) -> str:
    # The database lives for the whole session; unique names keep tests independent of order and reruns.
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def test_fixture_facts_agree(postgres: Postgres) -> None:
    assert postgres.host == "127.0.0.1"
    assert postgres.dsn == f"postgresql+psycopg://{postgres.user}@{postgres.host}:{postgres.port}/{postgres.dbname}"
    assert postgres.libpq_dsn == f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/{postgres.dbname}"
    with psycopg.connect(postgres.libpq_dsn) as conn:
        row = conn.execute("SELECT current_user, current_database(), inet_server_port()").fetchone()
    assert row == (postgres.user, postgres.dbname, postgres.port)


def test_psycopg_round_trip(postgres: Postgres) -> None:
    table = _table_name("psycopg")
    rows = [("alpha", 1), ("beta", 2), ("gamma", 3)]
    with psycopg.connect(postgres.libpq_dsn) as conn:
        conn.execute(f"CREATE TABLE {table} (name text PRIMARY KEY, n integer NOT NULL)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} (name, n) VALUES (%s, %s)", rows)
        conn.commit()
        fetched = conn.execute(f"SELECT name, n FROM {table} WHERE n >= %s ORDER BY n", (2,)).fetchall()
    assert fetched == rows[1:]


def test_sqlalchemy_round_trip(postgres: Postgres) -> None:
    metadata = sa.MetaData()
    table = sa.Table(
        _table_name("sqla"),
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("payload", sa.JSON, nullable=False),
    )
    engine = sa.create_engine(postgres.dsn)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.insert(table), [{"id": 1, "payload": {"k": "v"}}, {"id": 2, "payload": [1, 2]}])
        with engine.connect() as conn:
            got = conn.execute(
                sa.select(table.c.payload).where(table.c.id == sa.bindparam("wanted")), {"wanted": 2}
            ).scalar_one()
        assert got == [1, 2]
    finally:
        engine.dispose()


@pytest.fixture
def ready_jobs(postgres: Postgres) -> Iterator[str]:
    table = _table_name("jobs")
    with psycopg.connect(postgres.libpq_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, state text NOT NULL)")
        conn.execute(f"INSERT INTO {table} (id, state) VALUES (1, 'ready'), (2, 'ready')")
        yield table
        conn.execute(f"DROP TABLE {table}")


def test_skip_locked_passes_over_rows_held_by_another_transaction(postgres: Postgres, ready_jobs: str) -> None:
    claim = CLAIM.format(table=ready_jobs)
    # A lock_timeout turns a regression (the second claim blocking on the first) into an error, not a hang.
    options = "-c lock_timeout=5s"
    with (
        psycopg.connect(postgres.libpq_dsn, options=options) as worker_a,
        psycopg.connect(postgres.libpq_dsn, options=options) as worker_b,
    ):
        first = worker_a.execute(claim).fetchone()
        assert first == (1,)

        second = worker_b.execute(claim).fetchone()
        assert second == (2,), "the second worker must skip the row the first one holds"

        # Both rows held: a third claim finds nothing rather than waiting.
        with psycopg.connect(postgres.libpq_dsn, options=options) as worker_c:
            assert worker_c.execute(claim).fetchone() is None

        # The first worker gives its row back without finishing it; it becomes claimable again.
        worker_a.rollback()
        assert worker_a.execute(claim).fetchone() == (1,)

        # A finished job leaves the ready set for good once its transaction commits.
        worker_b.execute(f"UPDATE {ready_jobs} SET state = 'done' WHERE id = %s", second)
        worker_b.commit()
        worker_a.rollback()
        assert worker_a.execute(claim).fetchone() == (1,)
        worker_a.execute(f"UPDATE {ready_jobs} SET state = 'done' WHERE id = 1")
        worker_a.commit()
        assert worker_b.execute(claim).fetchone() is None
