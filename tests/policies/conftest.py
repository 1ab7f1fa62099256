"""Fixtures shared by the policy tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.downstream import Downstream


@pytest.fixture
def downstream() -> Iterator[Downstream]:
    """A real HTTP server standing in for models and connectors: tests script its replies and count its calls."""
    server = Downstream()
    yield server
    server.close()
