"""Connector steps on a postgres Connector: which named statement runs, with what parameters.

The engine only decides *what* to run; the database client (``connectors.postgres.PostgresClient``, given to the
``Engine`` by the process that runs workers) binds the parameters, pools connections per Connector and classifies
database errors. SQL only ever comes from the Connector's spec; a step's data reaches it as bound parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from crds.connector import Postgres, PostgresQuery
from engine.errors import StepError
from engine.executors.base import StepContext

UNKNOWN_OPERATION = "UnknownOperation"
NO_DATABASE_CLIENT = "NoDatabaseClient"
INVALID_INPUT = "InvalidInput"

#: Parameters every statement may use, set by the engine: the step's idempotency key (the same on every attempt,
#: e.g. for ``INSERT ... ON CONFLICT (idempotency_key) DO NOTHING``) and the task id. Input fields of these
#: names are overridden.
IDEMPOTENCY_KEY_PARAM = "idempotency_key"
TASK_ID_PARAM = "task_id"


class PostgresClient(Protocol):
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
        """Run ``query`` in one transaction with ``params`` bound; return ``{"rows": [...], "rowCount": n}``.

        Rows are dicts of JSON-safe values. Raises ``StepError``: retryable for transient failures (connection
        lost, serialization failure, deadlock, statement timeout), not for the statement's own faults (syntax,
        constraint violation, invalid parameter).
        """
        ...


def pick_query(connector: str, postgres: Postgres, operation: str | None) -> PostgresQuery:
    """The statement a step names with ``connector.operation``; may be left out when the Connector has one."""
    by_name = {query.name: query for query in postgres.queries}
    if operation is None:
        if len(by_name) == 1:
            return next(iter(by_name.values()))
        raise StepError(
            UNKNOWN_OPERATION,
            f"connector {connector!r} has {len(by_name)} queries ({', '.join(sorted(by_name)) or 'none'}); "
            "name one with the step's connector.operation",
            retryable=False,
        )
    query = by_name.get(operation)
    if query is None:
        raise StepError(
            UNKNOWN_OPERATION,
            f"connector {connector!r} has no query {operation!r} (it has: {', '.join(sorted(by_name)) or 'none'})",
            retryable=False,
        )
    return query


def query_params(ctx: StepContext, connector: str, payload: Any) -> dict[str, Any]:
    """The step's input as bind parameters, plus the engine's own (see ``IDEMPOTENCY_KEY_PARAM``)."""
    if payload is None:
        payload = {}
    if not isinstance(payload, Mapping):
        raise StepError(
            INVALID_INPUT,
            f"connector {connector!r}: a postgres step's input must be an object of parameters, "
            f"not {type(payload).__name__}",
            retryable=False,
        )
    return {**payload, IDEMPOTENCY_KEY_PARAM: ctx.idempotency_key, TASK_ID_PARAM: ctx.task_id}
