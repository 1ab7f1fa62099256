"""A PostgreSQL connection that dies under the engine (a restarted server, a proxy's idle timeout) costs no step.

Pooled connections are pinged only after sitting idle (``PING_AFTER_IDLE_S``); one in use moments ago is trusted,
and if it did die, its transaction fails as a disconnect and the worker retries it on a new connection. The server
really drops them here: ``pg_terminate_backend`` on every connection of the engine (found by an application name of
the test's own, as other tests share the server).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from engine import TaskState
from engine.store import database
from engine.store.database import Database, pipeline
from engine.store.migrate import upgrade
from engine.store.prepared import Prepared
from engine.store.schema import events
from tests.engine.conftest import EngineFactory, fast_worker
from tests.fixtures.postgres import Postgres


@dataclass(frozen=True)
class Tagged:
    """The test schema's URL, with an application name of its own on every connection, to drop them by."""

    url: str
    postgres: Postgres
    app_name: str

    def drop_connections(self) -> int:
        """Terminate every connection of ``url`` server-side; how many there were."""
        with psycopg.connect(self.postgres.libpq_dsn, autocommit=True) as admin:
            query = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
            return len(admin.execute(query, (self.app_name,)).fetchall())


@pytest.fixture
def tagged(pg_url: str, postgres: Postgres) -> Tagged:
    app_name = f"aiplane-test-{uuid.uuid4().hex[:12]}"
    url = sa.make_url(pg_url).update_query_dict({"application_name": app_name})
    return Tagged(url.render_as_string(hide_password=False), postgres, app_name)


def rules(name: str) -> dict[str, Any]:
    return {"name": name, "type": "rules", "rules": {"set": {name: "1"}}}


def test_a_connection_dropped_between_steps_is_replaced_and_no_step_is_lost_or_repeated(
    make_engine: EngineFactory, tagged: Tagged, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # No ping at all: the dead connection is met by the completion's own transaction.
    monkeypatch.setattr(database, "PING_AFTER_IDLE_S", 3600.0)
    engine = make_engine(tagged.url)
    engine.register_workflow("three", {"steps": [rules("a"), rules("b"), rules("c")]})
    task = engine.submit("acme", "three", {})
    worker = fast_worker(engine)  # driven step by step here, not started
    (claimed,) = worker.claim(1)
    chained = worker.run_step(claimed)
    assert chained is not None
    assert tagged.drop_connections() >= 1
    with caplog.at_level(logging.WARNING, logger="engine.worker.loop"):
        chained = worker.run_step(*chained)  # b: completed on a new connection, c chained to it
    assert "transient database error, retrying" in caplog.text
    assert chained is not None
    assert worker.run_step(*chained) is None
    done = engine.get("acme", task.id)
    assert done.state == TaskState.SUCCEEDED
    assert done.vars == {"a": 1, "b": 1, "c": 1}
    assert [(s.name, s.attempts) for s in engine.steps("acme", task.id)] == [("a", 1), ("b", 1), ("c", 1)]
    completed = [e.payload["step"] for e in engine.events(task.id) if e.type == "step.completed"]
    assert completed == ["a", "b", "c"]


def test_a_connection_that_died_idle_in_the_pool_is_replaced_before_use(
    make_engine: EngineFactory, tagged: Tagged, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads are not retried: what keeps them working after a server restart is the ping of idle connections."""
    engine = make_engine(tagged.url)
    engine.register_workflow("one", {"steps": [rules("a")]})
    task = engine.submit("acme", "one", {})
    assert tagged.drop_connections() >= 1
    monkeypatch.setattr(database, "PING_AFTER_IDLE_S", 0.0)  # every connection counts as idle
    assert engine.get("acme", task.id).state == TaskState.QUEUED


@pytest.fixture
def tagged_db(tagged: Tagged) -> Iterator[Database]:
    db = Database(tagged.url)
    upgrade(db)
    yield db
    db.dispose()


def test_a_connection_dropped_inside_a_pipeline_fails_as_a_disconnect_and_is_replaced(
    tagged_db: Database, tagged: Tagged
) -> None:
    insert = Prepared(sa.insert(events))
    row: dict[str, Any] = {
        "id": "e1",
        "task_id": None,
        "tenant": "t",
        "type": "x",
        "payload": {},
        "created_at": datetime.now(UTC),
    }

    def write_after_the_drop() -> None:
        with tagged_db.write() as conn, pipeline(conn):
            tagged.drop_connections()
            insert.execute(conn, row)

    with pytest.raises(sa.exc.OperationalError) as failed:
        write_after_the_drop()
    assert failed.value.connection_invalidated
    with tagged_db.write() as conn:  # on a new connection
        insert.execute(conn, row)
    with tagged_db.read() as conn:
        assert conn.execute(sa.select(events.c.id)).scalars().all() == ["e1"]
