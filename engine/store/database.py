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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import QueuePool

SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE = "aiplane_write"
_AFTER_COMMIT = "aiplane_after_commit"
_IDLE_SINCE = "aiplane_idle_since"
_PIPELINE = "aiplane_pipeline"
#: Seconds a pooled PostgreSQL connection may sit idle before it is pinged at checkout.
PING_AFTER_IDLE_S = 1.0


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
            self.engine = _postgres_engine(self.url, echo=echo, pool_size=pool_size)
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


@contextlib.contextmanager
def pipeline(conn: sa.Connection) -> Iterator[None]:
    """Send the block's statements to PostgreSQL together instead of one round trip each (psycopg's pipeline mode).

    ``Prepared`` statements are queued as they run, the server working through them meanwhile; reading a
    statement's rows (``fetchone``...) sends what is queued and waits for the results, and the block's end waits for
    the rest. So a row count is known only once the statement's rows are read (say RETURNING where it matters), and
    an error of a queued statement surfaces at the next wait, as a SQLAlchemy error. Statements run through
    SQLAlchemy wait for their results at once (it reads them right away). On SQLite (in process, no round trips) a
    no-op.
    """
    if conn.dialect.name != "postgresql":
        yield
        return
    try:
        info = conn.info  # the pooled connection's (unreachable through ``conn`` once it is invalidated)
        driver: Any = conn.connection.driver_connection
        with driver.pipeline() as queue:
            info[_PIPELINE] = queue
            try:
                yield
            finally:
                del info[_PIPELINE]
    except conn.dialect.loaded_dbapi.Error as exc:  # met by a read in the block or at its end, waiting on the queue
        raise dbapi_error(conn, None, exc) from exc


def dbapi_error(conn: sa.Connection, statement: str | None, exc: Any) -> sa.exc.StatementError:
    """A driver error of a statement run past SQLAlchemy, as SQLAlchemy would raise it: the same exception classes
    (``sa.exc.OperationalError``...), and a connection found dead is invalidated so the pool replaces it."""
    invalidated = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
    if invalidated:
        conn.invalidate(exc)
    error: sa.exc.StatementError = sa.exc.DBAPIError.instance(
        statement, None, exc, conn.dialect.loaded_dbapi.Error, connection_invalidated=invalidated, dialect=conn.dialect
    )
    return error


def after_commit(conn: sa.Connection, action: Callable[[], None]) -> None:
    """Run ``action`` once the ``Database.write`` transaction on ``conn`` has committed, and never if it rolls back."""
    committed: list[Callable[[], None]] | None = conn.get_execution_options().get(_AFTER_COMMIT)
    if committed is None:
        raise RuntimeError("after_commit needs a transaction opened by Database.write()")
    committed.append(action)


def _postgres_engine(url: URL, *, echo: bool, pool_size: int) -> sa.Engine:
    # Last in, first out: a busy thread gets back the connection it just used (warm, its statements prepared),
    # and the ones left idle are the ones that need a ping.
    engine = sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_use_lifo=True, echo=echo)

    # Disconnect handling: a connection that sat idle in the pool (a restarted server, a proxy's idle timeout)
    # is pinged before use and replaced if dead. One used moments ago is not: a ping on every checkout
    # (pool_pre_ping) was a round trip per transaction, a tenth of a worker step (benchmarks/bench_engine). If one
    # of those did die, its first statement fails as a disconnect, SQLAlchemy replaces the pool's connections,
    # and the worker retries the transaction (Worker._write); other callers see one error.
    @sa.event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            if engine.dialect.is_disconnect(exc, dbapi_connection, None):
                raise sa.exc.DisconnectionError("pooled connection was closed while idle") from exc  # pool reconnects
            raise

    # SQLAlchemy reads a statement's results as soon as it has run it: inside ``pipeline`` it must not stay queued.
    @sa.event.listens_for(engine, "after_cursor_execute")
    def _on_execute(conn: sa.Connection, *_: Any) -> None:
        queue = conn.info.get(_PIPELINE)
        if queue is not None:
            queue.sync()

    return engine


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


def dialect_insert(conn: sa.Connection | str, table: sa.Table) -> Any:
    """INSERT with ``on_conflict_do_nothing`` / ``on_conflict_do_update`` (same API on SQLite and PostgreSQL), for
    a connection or a dialect name (statements built once, before any connection)."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = conn if isinstance(conn, str) else conn.dialect.name
    return (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table)
