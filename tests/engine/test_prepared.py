"""``Prepared`` statements store exactly what SQLAlchemy would, on both databases, and fail like SQLAlchemy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from engine.store.database import Database, dialect_insert, pipeline
from engine.store.prepared import InsertIgnoringConflicts, Prepared
from engine.store.schema import events, step_runs

NOW = datetime(2026, 11, 25, 12, 30, 15, 123456, tzinfo=UTC)


def _event(event_id: str, payload: Any, created_at: datetime = NOW) -> dict[str, Any]:
    return {"id": event_id, "task_id": None, "tenant": "t", "type": "x", "payload": payload, "created_at": created_at}


def _raw(db: Database, table: sa.Table, order: sa.ColumnElement[Any]) -> list[tuple[Any, ...]]:
    """Rows as the database holds them (no result processing), minus the autoincrement key."""
    columns = [column for column in table.c if not column.autoincrement or not column.primary_key]
    with db.read() as conn:
        query = sa.select(*(sa.type_coerce(column, sa.String) for column in columns)).order_by(order)
        return [tuple(row) for row in conn.execute(query)]


def test_rows_are_stored_exactly_as_sqlalchemy_stores_them(db: Database) -> None:
    later = NOW + timedelta(seconds=1)
    rows = [
        _event("a1", {"z": 1, "a": [1, 2], "é": "ü"}),
        _event("a2", "text"),
        _event("a3", {"n": 1.5}, later),
    ]
    twins = [{**row, "id": "b" + row["id"][1:]} for row in rows]
    with db.write() as conn:
        assert Prepared(sa.insert(events)).executemany(conn, rows) == 3
        conn.execute(sa.insert(events), twins)
    stored = _raw(db, events, events.c.id)
    assert [row[1:] for row in stored[:3]] == [row[1:] for row in stored[3:]]
    with db.read() as conn:
        read = conn.execute(sa.select(events.c.payload, events.c.created_at).order_by(events.c.id)).all()
    assert [tuple(row) for row in read[:3]] == [(r["payload"], r["created_at"]) for r in rows]


def test_a_single_row_and_returning(db: Database) -> None:
    statement = Prepared(sa.insert(events).returning(events.c.id, events.c.type))
    with db.write() as conn:
        assert statement.execute(conn, _event("r1", {"k": "v"})).fetchall() == [("r1", "x")]


def test_update_with_varying_columns_and_values_the_statement_carries(db: Database) -> None:
    with db.write() as conn:
        Prepared(sa.insert(events)).executemany(conn, [_event("u1", 1), _event("u2", 2)])
    update = Prepared(sa.update(events).where(events.c.id == sa.bindparam("_id"), events.c.type == "x"))
    with db.write() as conn:
        assert update.execute(conn, {"_id": "u1", "payload": {"new": True}}).rowcount == 1
        assert update.execute(conn, {"_id": "u2", "payload": [], "published_at": NOW}).rowcount == 1
        assert update.execute(conn, {"_id": "nobody", "payload": 0}).rowcount == 0
    with db.read() as conn:
        rows = conn.execute(sa.select(events.c.id, events.c.payload, events.c.published_at).order_by(events.c.id)).all()
    assert [tuple(row) for row in rows] == [("u1", {"new": True}, None), ("u2", [], NOW)]


def test_database_errors_are_sqlalchemy_errors_and_roll_back(db: Database) -> None:
    statement = Prepared(sa.insert(events))

    def write_twice() -> None:
        with db.write() as conn:
            statement.executemany(conn, [_event("d1", 1), _event("d2", 2)])
            statement.execute(conn, _event("d1", 3))  # the same unique id again

    with pytest.raises(sa.exc.IntegrityError):
        write_twice()
    assert _raw(db, events, events.c.id) == []


def test_rows_read_by_first_hold_what_sqlalchemy_reads(db: Database) -> None:
    with db.write() as conn:
        Prepared(sa.insert(events)).executemany(conn, [_event("f1", {"z": [1, "é"]}), _event("f2", "text")])
    query = sa.select(events).where(events.c.id == sa.bindparam("_id"))
    statement = Prepared(query)
    with db.read() as conn:
        for event_id in ("f1", "f2"):
            row = statement.first(conn, statement.execute(conn, {"_id": event_id}))
            assert row._asdict() == conn.execute(query, {"_id": event_id}).one()._asdict()
            assert row.created_at == NOW
        assert statement.first(conn, statement.execute(conn, {"_id": "nobody"})) is None


def test_in_a_pipeline_reads_see_the_queued_writes_and_errors_are_sqlalchemy_errors(db: Database) -> None:
    insert = Prepared(sa.insert(events))
    count = Prepared(sa.select(sa.func.count()).select_from(events).where(events.c.type == sa.bindparam("_type")))
    mark = Prepared(sa.update(events).where(events.c.id == sa.bindparam("_id")).returning(events.c.id))
    with db.write() as conn, pipeline(conn):
        insert.execute(conn, _event("p1", 1))
        insert.executemany(conn, [_event("p2", 2), _event("p3", 3)])
        assert count.execute(conn, {"_type": "x"}).fetchone() == (3,)
        assert mark.execute(conn, {"_id": "p1", "published_at": NOW}).fetchall() == [("p1",)]
        assert mark.execute(conn, {"_id": "nobody", "published_at": NOW}).fetchall() == []
        assert conn.execute(sa.select(events.c.id).where(events.c.published_at.is_not(None))).scalars().all() == ["p1"]
        insert.execute(conn, _event("p4", 4))  # sent when the block ends

    def write_a_duplicate() -> None:
        with db.write() as conn, pipeline(conn):
            insert.execute(conn, _event("p5", 5))
            insert.execute(conn, _event("p1", 1))  # the same unique id again: the block's end raises, all rolls back

    with pytest.raises(sa.exc.IntegrityError):
        write_a_duplicate()
    assert [row[0] for row in _raw(db, events, events.c.id)] == ["p1", "p2", "p3", "p4"]


def test_statements_it_cannot_run_faithfully_are_refused(db: Database) -> None:
    expanding = Prepared(sa.select(step_runs.c.id).where(step_runs.c.id.in_(sa.bindparam("ids", expanding=True))))
    with pytest.raises(ValueError, match="not plain enough"), db.read() as conn:
        expanding.execute(conn, {"ids": ["a"]})
    missing = Prepared(sa.select(step_runs.c.id).where(step_runs.c.id == sa.bindparam("_id")))
    with pytest.raises(KeyError, match="_id"), db.read() as conn:
        missing.execute(conn, {})


@pytest.mark.parametrize("count", [1, 13, 130])
def test_insert_ignoring_conflicts_returns_exactly_the_rows_that_went_in(db: Database, count: int) -> None:
    statement = InsertIgnoringConflicts(events, [events.c.id])
    with db.write() as conn:
        Prepared(sa.insert(events)).executemany(conn, [_event(f"e{i:03d}", i) for i in range(0, count, 3)])
    rows = [_event(f"e{i:03d}", -i) for i in range(count)]
    with db.write() as conn:
        inserted = statement.execute(conn, [*rows, rows[-1]])  # a repeat within the batch goes in once
    assert sorted(inserted) == [(f"e{i:03d}",) for i in range(count) if i % 3]
    with db.read() as conn:
        stored = dict(conn.execute(sa.select(events.c.id, events.c.payload)).all())
    # Rows already there keep their values: nothing was updated.
    assert stored == {f"e{i:03d}": i if i % 3 == 0 else -i for i in range(count)}


def test_rows_given_column_by_column_are_stored_as_rows_are(db: Database) -> None:
    shared = {"task_id": None, "tenant": "t", "type": "x", "created_at": NOW}
    payloads = [{"z": 1, "a": [1, 2]}, "é", [], 1.5]
    statement = Prepared(sa.insert(events))
    with db.write() as conn:
        columns: dict[str, list[Any]] = {"id": [f"c{i}" for i in range(4)], "payload": payloads}
        assert statement.executemany_columns(conn, 4, columns, shared) == 4
        statement.executemany(conn, [_event(f"r{i}", payload) for i, payload in enumerate(payloads)])
        with pytest.raises(ValueError, match="'id' has 1 values for 2 rows"):
            statement.executemany_columns(conn, 2, {"id": ["x"], "payload": [1, 2]}, shared)
        assert statement.executemany_columns(conn, 0, {}, {}) == 0
    stored = _raw(db, events, events.c.id)
    assert [row[1:] for row in stored[:4]] == [row[1:] for row in stored[4:]]


def test_the_row_count_of_an_insert_ignoring_conflicts_counts_the_rows_that_went_in(db: Database) -> None:
    """What ``engine.runtime.bulk`` relies on to tell new tasks from repeated ones without reading them back."""
    with db.write() as conn:
        statement = Prepared(dialect_insert(conn, events).on_conflict_do_nothing())
        assert statement.executemany_columns(conn, 3, {"id": ["k0", "k1", "k2"]}, {"payload": 1, **_SHARED}) == 3
        assert statement.executemany_columns(conn, 4, {"id": ["k1", "k3", "k3", "k4"]}, {"payload": 2, **_SHARED}) == 2
        assert statement.executemany_columns(conn, 2, {"id": ["k0", "k4"]}, {"payload": 3, **_SHARED}) == 0


_SHARED = {"task_id": None, "tenant": "t", "type": "x", "created_at": NOW}
