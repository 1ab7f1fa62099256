"""Shared pytest set-up.

Real components (a test cluster, Kafka, PostgreSQL) come from session-scoped fixtures in ``tests/fixtures``.
A test that uses one of them is marked ``integration`` automatically, so ``make test-unit`` can leave them out
without every test having to remember a marker.
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.cluster",
    "tests.fixtures.kafka",
    "tests.fixtures.postgres",
    "tests.fixtures.prometheus",
]

# Fixtures that start a real external component; any test depending on them is an integration test.
INTEGRATION_FIXTURES = frozenset({"cluster", "kafka", "postgres", "prometheus"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
