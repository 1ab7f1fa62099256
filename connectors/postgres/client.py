"""``PostgresClient``: runs a postgres Connector's named statements for connector steps (``engine`` protocol
``engine.executors.postgres.PostgresClient``).

Statements go through SQLAlchemy's ``text()`` on the psycopg 3 driver, the engine store's own: ``:name``
parameters are bound by the driver, never spliced into the SQL, and ``::type`` casts and ``%`` stay as written.
Each Connector gets its own pool (keyed by name and DSN, so a rotated Secret gets a fresh pool), checked with a
ping on checkout so a connection the server dropped is replaced instead of failing a step.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from typing import Any

import psycopg
import sqlalchemy as sa
import sqlalchemy.exc

from connectors.postgres.errors import classify
from connectors.postgres.values import bind_value, json_safe
from crds.connector import PostgresQuery
from engine.errors import StepError

INVALID_INPUT = "InvalidInput"
TOO_MANY_ROWS = "TooManyRows"
#: Seconds to wait for a connection: from libpq (connect) and from the pool (all connections busy).
CONNECT_TIMEOUT = 10


@functools.lru_cache(maxsize=1024)
def parse(sql: str) -> tuple[sa.TextClause, frozenset[str]]:
    """The statement and the names of its ``:name`` parameters (parsed once per SQL text)."""
    clause = sa.text(sql)
    return clause, frozenset(clause.compile().params)


class _Pool:
    def __init__(self, connector: str, dsn: str, size: int) -> None:
        self.dsn = dsn
        self.size = size

        def connect() -> psycopg.Connection[Any]:
            # application_name shows which Connector a session belongs to in pg_stat_activity.
            return psycopg.connect(
                dsn, connect_timeout=CONNECT_TIMEOUT, application_name=f"aiplane-connector-{connector}"[:63]
            )

        self.engine = sa.create_engine(
            "postgresql+psycopg://",
            creator=connect,
            pool_size=size,
            max_overflow=0,
            pool_timeout=CONNECT_TIMEOUT,
            pool_pre_ping=True,
        )


class PostgresClient:
    """One per worker process, shared by its threads."""

    def __init__(self) -> None:
        self._pools: dict[str, _Pool] = {}
        self._lock = threading.Lock()

    def _pool(self, connector: str, dsn: str, size: int) -> _Pool:
        with self._lock:
            pool = self._pools.get(connector)
            if pool is not None and (pool.dsn, pool.size) == (dsn, size):
                return pool
            stale, pool = pool, _Pool(connector, dsn, size)
            self._pools[connector] = pool
        if stale is not None:
            # Closes the idle connections to the old DSN; ones still running a statement finish it first.
            stale.engine.dispose()
        return pool

    def run(
        self,
        *,
        connector: str,
        dsn: str,
        query: PostgresQuery,
        params: Mapping[str, Any],
        timeout: float,
        pool_size: int,
    ) -> dict[str, Any]:
        where = f"connector {connector!r} query {query.name!r}"
        clause, names = parse(query.sql)
        missing = sorted(names - params.keys())
        if missing:
            raise StepError(INVALID_INPUT, f"{where} needs input field(s) {', '.join(missing)}", retryable=False)
        bound = {name: bind_value(params[name]) for name in names}
        pool = self._pool(connector, dsn, pool_size)
        try:
            with pool.engine.connect() as conn:
                return _execute(conn, clause, bound, query=query, timeout=timeout, where=where)
        except (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.TimeoutError, psycopg.Error) as exc:
            raise classify(exc, where) from exc

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.engine.dispose()


def _execute(
    conn: sa.Connection,
    clause: sa.TextClause,
    bound: Mapping[str, Any],
    *,
    query: PostgresQuery,
    timeout: float,
    where: str,
) -> dict[str, Any]:
    """One transaction: the statement and its rows (at most ``maxRows``)."""
    # The step's timeout bounds the statement server-side too, so a slow query does not outlive the attempt. It is
    # set on the session and remembered with the connection, so the usual case (the same timeout as last time on
    # this connection) costs no extra round trip; a transaction that fails may have undone the setting, so the
    # memory is dropped then.
    info = conn.connection.info
    milliseconds = str(max(int(timeout * 1000), 1))
    try:
        with conn.begin():
            if info.get(_TIMEOUT_SET) != milliseconds:
                conn.execute(_SET_TIMEOUT, {"ms": milliseconds})
                info[_TIMEOUT_SET] = milliseconds
            result = conn.execute(clause, bound)
            if not result.returns_rows:
                return {"rows": [], "rowCount": max(result.rowcount, 0)}
            fetched = result.mappings().fetchmany(query.max_rows + 1)
            if len(fetched) > query.max_rows:
                # Raising inside the block rolls the transaction back: nothing it wrote stays.
                raise StepError(
                    TOO_MANY_ROWS,
                    f"{where} returned more than its maxRows ({query.max_rows}); add a LIMIT or raise maxRows",
                    retryable=False,
                )
            rows = [{str(k): json_safe(v) for k, v in row.items()} for row in fetched]
            return {"rows": rows, "rowCount": len(rows)}
    except BaseException:
        info.pop(_TIMEOUT_SET, None)
        raise


_TIMEOUT_SET = "aiplane_statement_timeout"
_SET_TIMEOUT = sa.text("SELECT set_config('statement_timeout', :ms, false)")
