"""Connecting to the store: SQLite (the embedded default) or PostgreSQL, and the transaction discipline.

SQLite is configured for several processes sharing one file: WAL (readers never block the writer), a busy
timeout (writers queue instead of failing), foreign keys on, and every write transaction opened with
``BEGIN IMMEDIATE`` so it takes the write lock up front. Deferred transactions that read first and upgrade to a
write later are what produce SQLITE_BUSY deadlocks between processes; immediate ones simply wait their turn.
That single-writer discipline is also what makes the queue's claim (a select then a conditional update in one
write transaction) atomic on SQLite, where PostgreSQL uses ``FOR UPDATE SKIP LOCKED`` instead.

Effects outside the database of what a write transaction does (Prometheus counters) wait for its commit with
``after_commit``: a transaction that is rolled back and retried (a worker retries lock timeouts and dropped
connections) runs its body twice, and what the body counted itself would be counted twice, or once for nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import QueuePool

SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE = "aiplane_write"
_AFTER_COMMIT = "aiplane_after_commit"


class Database:
    """One SQLAlchemy engine plus ``read()`` / ``write()`` transactions; safe to share between threads."""

    def __init__(
        self, url: str | URL, *, pool_size: int = 10, echo: bool = False, sqlite_synchronous: str = "FULL"
    ) -> None:
        """``sqlite_synchronous``: FULL (default) makes every commit survive power loss; NORMAL skips the fsync
        per commit (much faster) and is still safe against a crashed process, but a power loss may undo the
        last commits, and an undone step completion means that step runs again."""
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        if self.dialect == "sqlite":
            if sqlite_synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
                raise ValueError("sqlite_synchronous must be FULL, NORMAL or EXTRA")
            self.engine = _sqlite_engine(
                self.url, echo=echo, synchronous=sqlite_synchronous.upper(), pool_size=pool_size
            )
        elif self.dialect == "postgresql":
            if self.url.drivername == "postgresql":
                # psycopg 3 is the driver we ship; SQLAlchemy's bare "postgresql" would pick psycopg2.
                self.url = self.url.set(drivername="postgresql+psycopg")
            self.engine = sa.create_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, echo=echo
            )
        else:
            raise ValueError(f"unsupported database {self.url.drivername!r}: use sqlite:/// or postgresql+psycopg://")

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextlib.contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises; then, committed only,
        what the block handed to ``after_commit``, in order."""
        committed: list[Callable[[], None]] = []
        with self.engine.connect() as conn:
            # On this Connection object, not the pooled DBAPI connection: nothing outlives the transaction.
            conn.execution_options(**{_WRITE: True, _AFTER_COMMIT: committed})
            with conn.begin():
                yield conn
        for action in committed:
            action()

    @contextlib.contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A read-only transaction (a consistent snapshot on both databases)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()


def after_commit(conn: sa.Connection, action: Callable[[], None]) -> None:
    """Run ``action`` once the ``Database.write`` transaction on ``conn`` has committed, and never if it rolls back."""
    committed: list[Callable[[], None]] | None = conn.get_execution_options().get(_AFTER_COMMIT)
    if committed is None:
        raise RuntimeError("after_commit needs a transaction opened by Database.write()")
    committed.append(action)


def _sqlite_engine(url: URL, *, echo: bool, synchronous: str, pool_size: int) -> sa.Engine:
    database = url.database or ""
    if database in ("", ":memory:"):
        # Every pooled connection would get its own empty in-memory database; the engine needs one shared store.
        raise ValueError("the engine needs a file-backed SQLite database, e.g. sqlite:////var/lib/aiplane/engine.db")
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        echo=echo,
        # Pooled: opening a connection costs its PRAGMAs, and closing the last one checkpoints the WAL with an
        # fsync, which made a fresh connection per transaction the largest cost of a step (benchmarks/bench_engine).
        # Concurrency control stays with SQLite's locks; dispose() releases the file handles.
        poolclass=QueuePool,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the sqlite3 module (it would emit a deferred BEGIN on its own).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def dialect_insert(conn: sa.Connection, table: sa.Table) -> Any:
    """INSERT with ``on_conflict_do_nothing`` / ``on_conflict_do_update`` (same API on SQLite and PostgreSQL)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return (sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert)(table)
