"""Database errors as step errors: retryable when trying again can succeed, not when the statement is at fault.

Classified by SQLSTATE (PostgreSQL's error codes, appendix A of its manual): the class (first two characters)
decides, a few codes get a name of their own. Errors without a SQLSTATE come from the client side: a connection
that could not be made or was lost, retried like an HTTP connection error.
"""

from __future__ import annotations

import psycopg
import sqlalchemy.exc

from engine.errors import StepError

CONNECTION_ERROR = "ConnectionError"
TIMEOUT = "Timeout"
SERIALIZATION_FAILURE = "SerializationFailure"
DEADLOCK = "Deadlock"
CONSTRAINT_VIOLATION = "ConstraintViolation"
INVALID_QUERY = "InvalidQuery"
INVALID_PARAMETER = "InvalidParameter"
AUTHENTICATION_FAILED = "AuthenticationFailed"
DATABASE_ERROR = "DatabaseError"

#: Codes with their own kind, and whether a retry can succeed.
CODES: dict[str, tuple[str, bool]] = {
    "40001": (SERIALIZATION_FAILURE, True),
    "40P01": (DEADLOCK, True),
    "55P03": ("LockNotAvailable", True),
    # Statement timeout (the step's timeout) or a cancel: the next attempt may be faster.
    "57014": (TIMEOUT, True),
    # The server is shutting down or starting up.
    "57P01": (CONNECTION_ERROR, True),
    "57P02": (CONNECTION_ERROR, True),
    "57P03": (CONNECTION_ERROR, True),
    "3D000": ("DatabaseNotFound", False),
    "42501": ("PermissionDenied", False),
}
#: SQLSTATE classes: connection exception, transaction rollback, insufficient resources, operator intervention,
#: system error are transient; the rest are about the statement or its data.
CLASSES: dict[str, tuple[str, bool]] = {
    "08": (CONNECTION_ERROR, True),
    "40": ("TransactionRollback", True),
    "53": ("InsufficientResources", True),
    "57": ("OperatorIntervention", True),
    "58": ("SystemError", True),
    "22": (INVALID_PARAMETER, False),
    "23": (CONSTRAINT_VIOLATION, False),
    "28": (AUTHENTICATION_FAILED, False),
    "42": (INVALID_QUERY, False),
}


def kind_of(sqlstate: str | None) -> tuple[str, bool]:
    """(kind, retryable) of a SQLSTATE; None (a client-side failure: no connection, connection lost) is retryable."""
    if sqlstate is None:
        return CONNECTION_ERROR, True
    if sqlstate in CODES:
        return CODES[sqlstate]
    return CLASSES.get(sqlstate[:2], (DATABASE_ERROR, False))


def classify(exc: BaseException, where: str) -> StepError:
    """A ``StepError`` for a psycopg error (bare, or wrapped by SQLAlchemy), its message prefixed with ``where``."""
    original: BaseException = exc
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        original = exc.orig
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return StepError(CONNECTION_ERROR, f"{where}: connection lost: {_first_line(original)}", retryable=True)
    if isinstance(exc, sqlalchemy.exc.TimeoutError):  # no pooled connection freed up in time
        return StepError(TIMEOUT, f"{where}: no free connection in the pool: {exc}", retryable=True)
    if not isinstance(original, psycopg.Error):
        return StepError(DATABASE_ERROR, f"{where}: {_first_line(original)}", retryable=False)
    sqlstate = original.sqlstate
    if sqlstate is None and isinstance(original, psycopg.ProgrammingError | psycopg.InterfaceError):
        # Client-side misuse, e.g. a DSN libpq cannot parse: no retry will fix it.
        return StepError(DATABASE_ERROR, f"{where}: {_first_line(original)}", retryable=False)
    kind, retryable = kind_of(sqlstate)
    diag = original.diag
    facts = [f"SQLSTATE {sqlstate}"] if sqlstate else []
    if diag.constraint_name:
        facts.append(f"constraint {diag.constraint_name}")
    if diag.table_name:
        facts.append(f"table {diag.table_name}")
    if diag.column_name:
        facts.append(f"column {diag.column_name}")
    # The primary message, not the DETAIL: PostgreSQL's details quote row values (e.g. the duplicate key), which
    # would copy the task's data into error records and logs.
    message = diag.message_primary or _first_line(original)
    suffix = f" ({', '.join(facts)})" if facts else ""
    return StepError(kind, f"{where}: {message}{suffix}", retryable=retryable)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
