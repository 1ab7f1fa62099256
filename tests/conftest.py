"""Shared pytest set-up.

Real components (a test cluster, Kafka, PostgreSQL) come from session-scoped fixtures in ``tests/fixtures``.
A test that uses one of them is marked ``integration`` automatically, so ``make test-unit`` can leave them out
without every test having to remember a marker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from engine import TaskSpanStore
from engine.store.database import Database
from engine.store.migrate import upgrade
from tests.fixtures.reports import write_reports

pytest_plugins = [
    "tests.fixtures.cluster",
    "tests.fixtures.kafka",
    "tests.fixtures.oidc",
    "tests.fixtures.postgres",
    "tests.fixtures.prometheus",
]

# Fixtures that start a real external component; any test depending on them is an integration test.
INTEGRATION_FIXTURES = frozenset({"cluster", "kafka", "postgres", "prometheus"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The figures tests measured (PII detection's recall and precision per entity), after the results."""
    write_reports(config, terminalreporter)


@pytest.fixture(scope="module")
def spans() -> TaskSpanStore:
    """Spans ended in this process, by task id (the SDK's tracer provider, installed once)."""
    store = TaskSpanStore()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(store)
    return store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Parametrises a test over both stores: a SQLite file, and a fresh schema of the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'engine.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated store on ``db_url``."""
    database = Database(db_url)
    upgrade(database)
    yield database
    database.dispose()
