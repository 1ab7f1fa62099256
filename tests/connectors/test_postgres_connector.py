"""postgres Connectors against the real PostgreSQL: named statements run by workflows' connector steps, parameters
bound (an injection attempt stays data), rows back as JSON-safe dicts, errors classified for retries, one pool per
Connector."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from connectors.postgres import PostgresClient
from crds.connector import PostgresQuery
from engine import Engine, StaticConnectorResolver, StaticSecretResolver, TaskState
from engine.errors import StepError
from engine.store.schema import attempts
from tests.connectors.conftest import EngineFactory
from tests.engine.conftest import QUICK_RETRY, fast_worker, wait_done
from tests.fixtures import postgres as pg_fixture
from tests.fixtures.polling import assert_eventually
from tests.fixtures.postgres import Postgres

SETUP = """
CREATE TABLE claims (
    id text PRIMARY KEY,
    amount numeric(12, 2) NOT NULL CHECK (amount >= 0),
    note text,
    details jsonb,
    idempotency_key text UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Fails its first two calls with a serialization failure, as a concurrent transaction would make it fail.
-- A sequence, not a table, counts the calls: nextval is not rolled back with the failed transaction.
CREATE SEQUENCE flaky_calls;
CREATE FUNCTION flaky_insert(claim text, key text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('flaky_calls') <= 2 THEN
        RAISE EXCEPTION 'could not serialize access' USING ERRCODE = 'serialization_failure';
    END IF;
    INSERT INTO claims (id, amount, idempotency_key) VALUES (claim, 0, key)
        ON CONFLICT (idempotency_key) DO NOTHING;
    RETURN key;
END $$;
"""

QUERIES: list[dict[str, Any]] = [
    {
        "name": "insert-claim",
        "sql": "INSERT INTO claims (id, amount, note, details, idempotency_key) "
        "VALUES (:id, :amount, :note, :details, :idempotency_key) RETURNING id, amount, created_at",
    },
    {"name": "get-claim", "sql": "SELECT id, amount, note, details, created_at FROM claims WHERE id = :id"},
    {"name": "by-ids", "sql": "SELECT id FROM claims WHERE id = ANY(:ids) ORDER BY id"},
    {"name": "count", "sql": "SELECT count(*)::int AS n FROM claims"},
    {"name": "flaky", "sql": "SELECT flaky_insert(:id, :idempotency_key) AS key"},
    {"name": "broken", "sql": "SELEC id FROM claims"},
    {"name": "series", "sql": "SELECT g FROM generate_series(1, :n) AS g", "maxRows": 3},
]


@pytest.fixture
def schema_dsn(postgres: Postgres) -> Iterator[str]:
    """A libpq DSN whose sessions work in a fresh schema holding the test's tables."""
    with pg_fixture.fresh_schema(postgres, "conn") as schema:
        dsn = pg_fixture.schema_dsn(postgres, schema)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SETUP)
        yield dsn


@pytest.fixture
def client() -> Iterator[PostgresClient]:
    pg = PostgresClient()
    yield pg
    pg.close()


def db_connector(**extra: Any) -> dict[str, Any]:
    return {"type": "postgres", "postgres": {"dsn": {"name": "claims-db", "key": "dsn"}, "queries": QUERIES, **extra}}


def make(make_engine: EngineFactory, client: PostgresClient, dsn: str | None, **connector: Any) -> Engine:
    return make_engine(
        connector_resolver=StaticConnectorResolver({"db": db_connector(**connector)}),
        secret_resolver=StaticSecretResolver({"claims-db": {"dsn": dsn}} if dsn else {}),
        postgres=client,
    )


def step(name: str, operation: str, retry: dict[str, Any] | None = None, **inputs: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "connector",
        "connector": {"name": "db", "operation": operation, "input": inputs},
        "retry": retry or {"maxAttempts": 1},
    }


def run(engine: Engine, steps: list[dict[str, Any]], data: dict[str, Any]) -> Any:
    name = f"wf-{uuid.uuid4().hex[:8]}"
    engine.register_workflow(name, {"steps": steps})
    with fast_worker(engine):
        return wait_done(engine, "acme", engine.submit("acme", name, data).id)


def rows(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def test_insert_then_query_with_parameters(make_engine: EngineFactory, client: PostgresClient, schema_dsn: str) -> None:
    engine = make(make_engine, client, schema_dsn)
    task = run(
        engine,
        [
            step(
                "save",
                "insert-claim",
                id="input.claimId",
                amount="input.amount",
                note="input.note",
                details="input.details",
            ),
            step("load", "get-claim", id="input.claimId"),
            step("many", "by-ids", ids="[input.claimId, 'C-none']"),
        ],
        {"claimId": "C-1", "amount": 1250.5, "note": "hail", "details": {"car": "VW", "parts": [1, 2]}},
    )
    assert task.state == TaskState.SUCCEEDED, task.error
    save, load, many = engine.steps("acme", task.id)
    assert save.output["rowCount"] == 1
    assert save.output["rows"][0]["id"] == "C-1"
    (row,) = load.output["rows"]
    # numeric comes back a number, jsonb an object, timestamptz ISO 8601 text: all JSON as the task stores it.
    assert row["amount"] == 1250.5
    assert row["details"] == {"car": "VW", "parts": [1, 2]}
    assert isinstance(row["created_at"], str)
    assert "T" in row["created_at"]
    assert many.output == {"rows": [{"id": "C-1"}], "rowCount": 1}
    # The step's idempotency key is bound too, for downstream deduplication.
    assert rows(schema_dsn, "SELECT idempotency_key FROM claims") == [(save.idempotency_key,)]


def test_injection_attempt_stays_data(make_engine: EngineFactory, client: PostgresClient, schema_dsn: str) -> None:
    engine = make(make_engine, client, schema_dsn)
    evil_note = "'); DROP TABLE claims; --"
    evil_id = "x' OR '1'='1"
    task = run(
        engine,
        [
            step("save", "insert-claim", id="input.id", amount="1", note="input.note", details="null"),
            step("probe", "get-claim", id="input.probe"),
        ],
        {"id": "C-2", "note": evil_note, "probe": evil_id},
    )
    assert task.state == TaskState.SUCCEEDED, task.error
    assert engine.steps("acme", task.id)[1].output == {"rows": [], "rowCount": 0}
    # The table is still there and holds the text exactly as sent.
    assert rows(schema_dsn, "SELECT id, note FROM claims") == [("C-2", evil_note)]


def test_missing_secret_is_a_clear_error(make_engine: EngineFactory, client: PostgresClient) -> None:
    engine = make(make_engine, client, None)
    task = run(engine, [step("load", "count", retry=QUICK_RETRY)], {})
    assert task.state == TaskState.DEAD_LETTERED
    assert task.error is not None
    assert task.error["kind"] == "SecretUnavailable"
    assert "connector 'db' dsn needs secret claims-db/dsn" in task.error["message"]


def test_transient_failure_is_retried_with_the_same_idempotency_key(
    make_engine: EngineFactory, client: PostgresClient, schema_dsn: str
) -> None:
    engine = make(make_engine, client, schema_dsn)
    task = run(engine, [step("save", "flaky", retry=QUICK_RETRY, id="'C-3'")], {})
    assert task.state == TaskState.SUCCEEDED, task.error
    (save,) = engine.steps("acme", task.id)
    assert save.attempts == 3
    assert save.output == {"rows": [{"key": save.idempotency_key}], "rowCount": 1}
    with engine.db.read() as conn:
        errors = conn.execute(sa.select(attempts.c.error).order_by(attempts.c.number)).scalars().all()
    assert [e["kind"] if e else None for e in errors] == ["SerializationFailure", "SerializationFailure", None]
    assert rows(schema_dsn, "SELECT id, idempotency_key FROM claims") == [("C-3", save.idempotency_key)]


@pytest.mark.parametrize(
    ("operation", "inputs", "kind", "message"),
    [
        ("broken", {}, "InvalidQuery", "syntax error at or near"),
        (
            "insert-claim",
            {"id": "'C-4'", "amount": "-1.0", "note": "''", "details": "null"},
            "ConstraintViolation",
            "constraint claims_amount_check",
        ),
        ("get-claim", {}, "InvalidInput", "needs input field(s) id"),
        (
            "insert-claim",
            {"id": "'C-5'", "amount": "'lots'", "note": "''", "details": "null"},
            "InvalidParameter",
            "invalid input syntax for type numeric",
        ),
        ("series", {"n": "5"}, "TooManyRows", "more than its maxRows (3)"),
        ("nope", {}, "UnknownOperation", "has no query 'nope'"),
    ],
)
def test_faults_of_the_statement_are_not_retried(
    make_engine: EngineFactory,
    client: PostgresClient,
    schema_dsn: str,
    *,
    operation: str,
    inputs: dict[str, str],
    kind: str,
    message: str,
) -> None:
    engine = make(make_engine, client, schema_dsn)
    task = run(engine, [step("q", operation, retry=QUICK_RETRY, **inputs)], {})
    assert task.state == TaskState.DEAD_LETTERED
    (run_,) = engine.steps("acme", task.id)
    assert run_.attempts == 1
    assert task.error is not None
    assert task.error["kind"] == kind
    assert message in task.error["message"]
    assert rows(schema_dsn, "SELECT count(*) FROM claims") == [(0,)]


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("DO $$ BEGIN RAISE EXCEPTION 'deadlock' USING ERRCODE = 'deadlock_detected'; END $$", "Deadlock"),
        ("DO $$ BEGIN RAISE EXCEPTION 'lost' USING ERRCODE = 'connection_failure'; END $$", "ConnectionError"),
        ("SELECT pg_sleep(5)", "Timeout"),  # the statement outlives the step's timeout
    ],
)
def test_transient_database_errors_are_retryable(client: PostgresClient, schema_dsn: str, sql: str, kind: str) -> None:
    with pytest.raises(StepError) as failed:
        run_query(client, schema_dsn, sql, timeout=0.2)
    assert failed.value.kind == kind
    assert failed.value.retryable


def run_query(client: PostgresClient, dsn: str, sql: str, timeout: float = 5.0, **params: Any) -> dict[str, Any]:
    return client.run(
        connector="db",
        dsn=dsn,
        query=PostgresQuery(name="q", sql=sql),
        params=params,
        timeout=timeout,
        pool_size=2,
    )


def test_one_pool_per_connector_survives_dropped_connections(
    client: PostgresClient, schema_dsn: str, postgres: Postgres
) -> None:
    for _ in range(5):
        assert run_query(client, schema_dsn, "SELECT 1 AS one")["rows"] == [{"one": 1}]

    def sessions() -> int:
        found = rows(
            postgres.libpq_dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'aiplane-connector-db'"
        )
        return int(found[0][0])

    assert 1 <= sessions() <= 2
    # The server drops the pool's connections (a failover, an idle timeout): the next step reconnects.
    rows(
        postgres.libpq_dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'aiplane-connector-db'",
    )
    assert_eventually(lambda: sessions() == 0 or pytest.fail("still connected"), timeout=10)
    assert run_query(client, schema_dsn, "SELECT 2 AS two")["rows"] == [{"two": 2}]


def test_values_come_back_json_safe(client: PostgresClient, schema_dsn: str) -> None:
    (row,) = run_query(
        client,
        schema_dsn,
        "SELECT 1.50::numeric AS dec, 7::numeric AS whole, 'NaN'::numeric AS nan, "
        "'2026-01-02 03:04:05+00'::timestamptz AS ts, '2026-01-02'::date AS d, interval '90 seconds' AS iv, "
        "'\\x0102'::bytea AS raw, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, ARRAY[1, 2] AS arr, "
        "'{\"a\": [1, null]}'::jsonb AS doc, '10.0.0.1'::inet AS ip, CAST(:text AS text) AS echoed",
        text="50% off :not_a_param",
    )["rows"]
    assert row == {
        "dec": 1.5,
        "whole": 7,
        "nan": "NaN",
        "ts": "2026-01-02T03:04:05+00:00",
        "d": "2026-01-02",
        "iv": 90.0,
        "raw": "AQI=",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "arr": [1, 2],
        "doc": {"a": [1, None]},
        "ip": "10.0.0.1",
        "echoed": "50% off :not_a_param",
    }


def test_a_new_dsn_gets_a_new_pool(client: PostgresClient, schema_dsn: str, postgres: Postgres) -> None:
    def sessions() -> list[tuple[Any, ...]]:
        return rows(
            postgres.libpq_dsn,
            "SELECT backend_start FROM pg_stat_activity WHERE application_name = 'aiplane-connector-db'",
        )

    run_query(client, schema_dsn, "SELECT 1")
    (before,) = sessions()
    # The Secret was rotated: the old pool's connections close, the new DSN gets its own.
    run_query(client, f"{schema_dsn}&connect_timeout=5", "SELECT 1")
    assert_eventually(lambda: len(sessions()) == 1 and sessions()[0] != before, timeout=10)


def test_each_statement_gets_its_steps_timeout(client: PostgresClient, schema_dsn: str) -> None:
    # One pooled connection serves all three: the timeout it remembers must follow each step's.
    assert run_query(client, schema_dsn, "SELECT 1 AS one", timeout=5)["rows"] == [{"one": 1}]
    with pytest.raises(StepError) as failed:
        run_query(client, schema_dsn, "SELECT pg_sleep(2)", timeout=0.2)
    assert failed.value.kind == "Timeout"
    assert run_query(client, schema_dsn, "SELECT 1 AS one FROM pg_sleep(0.5)", timeout=5)["rows"] == [{"one": 1}]
    with pytest.raises(StepError) as failed:
        run_query(client, schema_dsn, "SELECT pg_sleep(2)", timeout=0.2)
    assert failed.value.kind == "Timeout"
