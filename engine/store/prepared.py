"""Hot-path statements run straight on the connection's DBAPI cursor, compiled once per dialect and column set.

SQLAlchemy's per-execution machinery (an execution context, parameter processing through generic hooks, result
wrapping) costs 40-80 µs per statement here, more than SQLite takes to run one, and the engine runs several
statements per task and per step (benchmarks/bench_engine, bench_submit). A ``Prepared`` statement is compiled by
SQLAlchemy itself, once per dialect and set of parameter names, with the bind processors of its column types
(so values are stored exactly as SQLAlchemy would store them); executing it is a tuple of converted values and
one ``cursor.execute``/``executemany`` inside the caller's transaction. What it gives up: SQLAlchemy's cursor
events and echo logging for these statements. DBAPI errors are re-raised as SQLAlchemy's (``sa.exc.DBAPIError``
subclasses), so callers handle them as for any other statement. Inside ``database.pipeline`` statements are
queued: reading a statement's rows sends the queue and waits; its ``rowcount`` is known only once they are read.

Only plain statements qualify: no expanding (IN-list) parameters, no parameter names that need escaping.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler

from engine.store.database import dbapi_error, dialect_insert

_Processor = Callable[[Any], Any]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    #: Bind names in the order the DBAPI wants them (positional dialects), or all of them (named ones).
    names: tuple[str, ...]
    processors: tuple[_Processor | None, ...]
    #: Values the statement itself carries (``.where(column == 'literal')``), already processed.
    fixed: Mapping[str, Any]
    positional: bool

    def row(self, params: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        fixed = self.fixed
        values = [
            fixed[name] if name in fixed else (params[name] if process is None else process(params[name]))
            for name, process in zip(self.names, self.processors, strict=True)
        ]
        return values if self.positional else dict(zip(self.names, values, strict=True))


class Prepared:
    """A statement to run on the raw cursor; ``execute`` one parameter set, ``executemany`` several.

    Insert and update statements take their column values from the parameters' keys (like SQLAlchemy's
    ``conn.execute(insert(table), rows)``); every parameter set of one ``executemany`` call has the same keys.
    """

    def __init__(self, statement: sa.Executable) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, frozenset[str]], _Compiled] = {}
        self._rows: dict[str, Callable[[Sequence[Any]], Any]] = {}

    def execute(self, conn: sa.Connection, params: Mapping[str, Any]) -> Any:
        """Run once; returns the DBAPI cursor (``fetchone``/``fetchall`` for RETURNING or SELECT, ``rowcount``)."""
        compiled = self._compile(conn.dialect, params)
        return _run(conn, compiled, lambda cursor: cursor.execute(compiled.sql, compiled.row(params)))

    def executemany(self, conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        """Run for every parameter set in one DBAPI ``executemany``; returns the rows affected (-1: unknown)."""
        if not rows:
            return 0
        if len(rows) == 1:
            return int(self.execute(conn, rows[0]).rowcount)
        compiled = self._compile(conn.dialect, rows[0])
        cursor = _run(
            conn, compiled, lambda cursor: cursor.executemany(compiled.sql, [compiled.row(row) for row in rows])
        )
        return int(cursor.rowcount)

    def executemany_columns(
        self, conn: sa.Connection, count: int, columns: Mapping[str, Sequence[Any]], shared: Mapping[str, Any]
    ) -> int:
        """``executemany`` of ``count`` rows given column by column: ``columns`` holds a value per row, ``shared``
        one value for every row, converted once. For batches whose rows differ in a few columns (a source's tasks:
        ids, inputs, keys), where converting every value of every row costs more than the insert itself."""
        if count == 0:
            return 0
        compiled = self._compile(conn.dialect, {**columns, **shared})
        fixed = compiled.fixed
        values: list[Any] = []
        for name, process in zip(compiled.names, compiled.processors, strict=True):
            if name in fixed:
                values.append(itertools.repeat(fixed[name], count))
            elif name in shared:
                value = shared[name]
                values.append(itertools.repeat(value if process is None else process(value), count))
            else:
                column = columns[name]
                if len(column) != count:
                    raise ValueError(f"column {name!r} has {len(column)} values for {count} rows")
                values.append(column if process is None else map(process, column))
        rows: list[Any] = list(zip(*values, strict=True))
        if not compiled.positional:
            rows = [dict(zip(compiled.names, row, strict=True)) for row in rows]
        cursor = _run(conn, compiled, lambda cursor: cursor.executemany(compiled.sql, rows))
        return int(cursor.rowcount)

    def first(self, conn: sa.Connection, cursor: Any) -> Any:
        """The first row ``execute`` returned on ``conn`` (a SELECT, RETURNING), or None; its values converted as
        SQLAlchemy converts them, read by column name (``row.state``) as from a SQLAlchemy row."""
        values = cursor.fetchone()
        if values is None:
            return None
        make = self._rows.get(conn.dialect.name)
        if make is None:
            make = self._rows[conn.dialect.name] = _row_factory(self.statement, conn.dialect)
        return make(values)

    def _compile(self, dialect: Dialect, params: Mapping[str, Any]) -> _Compiled:
        cache_key = (dialect.name, frozenset(params))
        compiled = self._compiled.get(cache_key)
        if compiled is None:
            compiled = self._compiled[cache_key] = _compile(self.statement, dialect, params)
        return compiled


class InsertIgnoringConflicts:
    """``INSERT ... VALUES (...), (...) ON CONFLICT DO NOTHING RETURNING``: which of many rows went in, in one
    round trip per chunk (a DBAPI ``executemany`` cannot return rows, and drivers disagree on the row count of an
    insert that did nothing).

    Chunks have power-of-two sizes up to 128 (a batch of 13 goes as 8 + 4 + 1): compiling the statement for 128
    rows costs ~0.1 s, so a variant for every batch size would cost more than all the round trips it saves.
    """

    CHUNKS = tuple(2**power for power in range(7, -1, -1))

    def __init__(self, table: sa.Table, returning: Sequence[sa.Column[Any]]) -> None:
        self.table = table
        self.returning = tuple(returning)
        self._statements: dict[tuple[str, int, tuple[str, ...]], Prepared] = {}

    def execute(self, conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """The ``returning`` columns of the rows inserted; every row has the same keys."""
        if not rows:
            return []
        names = tuple(rows[0])
        inserted: list[tuple[Any, ...]] = []
        start = 0
        for size in self.CHUNKS:
            while len(rows) - start >= size:
                chunk, start = rows[start : start + size], start + size
                params = {f"{name}_{index}": row[name] for index, row in enumerate(chunk) for name in names}
                cursor = self._statement(conn, size, names).execute(conn, params)
                inserted.extend(tuple(row) for row in cursor.fetchall())
        return inserted

    def _statement(self, conn: sa.Connection, size: int, names: tuple[str, ...]) -> Prepared:
        key = (conn.dialect.name, size, names)
        statement = self._statements.get(key)
        if statement is None:
            insert = dialect_insert(conn, self.table)
            values = [
                {name: sa.bindparam(f"{name}_{index}", type_=self.table.c[name].type) for name in names}
                for index in range(size)
            ]
            statement = self._statements[key] = Prepared(
                insert.values(values).on_conflict_do_nothing().returning(*self.returning)
            )
        return statement


def _compile(statement: sa.Executable, dialect: Dialect, params: Mapping[str, Any]) -> _Compiled:
    assert isinstance(statement, sa.ClauseElement)
    compiler = statement.compile(dialect=dialect, column_keys=list(params))
    assert isinstance(compiler, SQLCompiler)
    if (
        compiler.escaped_bind_names
        or compiler.insert_prefetch
        or compiler.update_prefetch
        or any(bind.expanding for bind in compiler.binds.values())
    ):
        # Escaped or expanding parameters and Python-side column defaults need SQLAlchemy's execution context.
        raise ValueError(f"statement is not plain enough to prepare: {compiler.string}")
    positional = bool(compiler.positional)
    names = tuple(compiler.positiontup or () if positional else compiler.binds)
    processors: list[_Processor | None] = []
    fixed: dict[str, Any] = {}
    for name in names:
        bind = compiler.binds[name]
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        processors.append(None if process is None else _memoized(process))
        if name not in params:
            if bind.required:
                raise KeyError(f"parameter {name!r} missing for: {compiler.string}")
            value = bind.effective_value  # a value the statement carries
            fixed[name] = value if process is None else process(value)
    return _Compiled(compiler.string, names, tuple(processors), fixed, positional)


def _row_factory(statement: sa.Executable, dialect: Dialect) -> Callable[[Sequence[Any]], Any]:
    assert isinstance(statement, sa.sql.expression.ReturnsRows)
    columns = list(statement.exported_columns)
    row_type = collections.namedtuple("Row", [column.key for column in columns])  # type: ignore[misc]
    processors = [column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns]

    def make(values: Sequence[Any]) -> Any:
        return row_type._make(
            value if process is None else process(value) for value, process in zip(values, processors, strict=True)
        )

    return make


def _memoized(process: _Processor) -> _Processor:
    """``process`` remembering its last immutable value: a batch's rows share one timestamp across several
    columns, and converting a datetime for SQLite (normalise, then format) is the costliest of the conversions."""
    # One (value, result) pair, replaced whole: statements are shared between threads.
    last: tuple[Any, Any] = (None, None)

    def run(value: Any) -> Any:
        nonlocal last
        seen = last
        if value is seen[0] and value is not None:
            return seen[1]
        result = process(value)
        if type(value) in _IMMUTABLE:
            last = (value, result)
        return result

    return run


_IMMUTABLE = frozenset({datetime, str, int, float})


def _run(conn: sa.Connection, compiled: _Compiled, call: Callable[[Any], Any]) -> Any:
    cursor = conn.connection.cursor()
    try:
        call(cursor)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise dbapi_error(conn, compiled.sql, exc) from exc
    return cursor
