"""The store: migrations create exactly the schema the code uses, on SQLite and PostgreSQL; column types."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from engine.payloads import FileBlobStore, PayloadCodec
from engine.store.database import Database
from engine.store.migrate import current_revision, downgrade, head_revision, upgrade
from engine.store.schema import metadata, workflow_heads


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


def test_migrations_match_the_schema(db: Database) -> None:
    upgrade(db)
    upgrade(db)  # a second start finds the schema at head and does nothing
    assert current_revision(db) == head_revision()
    with db.read() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == []


def test_migrations_downgrade_and_upgrade_again(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    upgrade(db)
    downgrade(db, "base")
    with db.read() as conn:
        assert "tasks" not in sa.inspect(conn).get_table_names()
    upgrade(db)
    assert current_revision(db) == head_revision()


def test_datetimes_come_back_as_the_same_utc_instant(db: Database) -> None:
    upgrade(db)
    local = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    with db.write() as conn:
        conn.execute(sa.insert(workflow_heads).values(name="wf", version="v", updated_at=local))
    with db.read() as conn:
        stored = conn.execute(sa.select(workflow_heads.c.updated_at)).scalar_one()
    assert stored == local
    assert stored.tzinfo is not None
    assert stored.utcoffset() == timedelta(0)
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), db.write() as conn:
        conn.execute(sa.insert(workflow_heads).values(name="x", version="v", updated_at=datetime(2026, 1, 1)))


def test_sqlite_is_configured_for_several_processes(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    with db.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() >= 5000
    with pytest.raises(ValueError, match="file-backed"):
        Database("sqlite://")


def test_blob_store_is_content_addressed(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path)
    ref = blobs.put(b"hello")
    assert ref == blobs.put(b"hello")
    assert ref.startswith("sha256:")
    assert blobs.get(ref) == b"hello"
    codec = PayloadCodec(blobs, inline_limit=10)
    small, large = codec.encode({"a": 1}), codec.encode({"a": "x" * 100})
    assert small.inline == '{"a":1}'
    assert small.ref is None
    assert large.inline is None
    assert large.ref is not None
    assert codec.decode(large.inline, large.ref) == {"a": "x" * 100}
    assert codec.encode(None) == codec.encode(None)
    assert codec.decode(None, None) is None
