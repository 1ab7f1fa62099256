"""Fixtures of the connector tests: the real broker (``kafka``), and engines on a SQLite file (or a given store)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import Engine

EngineFactory = Callable[..., Engine]

# A one-step workflow: a task runs without any downstream, so tests need no model or HTTP server.
RULES_WORKFLOW: dict[str, Any] = {
    "steps": [{"name": "decide", "type": "rules", "rules": {"set": {"big": "input.amount > 1000.0"}}}],
}


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[EngineFactory]:
    engines: list[Engine] = []

    def make(url: str | None = None, **kwargs: Any) -> Engine:
        """An engine on ``url`` (e.g. ``db_url``'s, for both stores), by default a SQLite file of the test's own."""
        kwargs.setdefault("data_dir", tmp_path / "data")
        # No fsync per commit: still safe against killed processes, which is what these tests exercise.
        kwargs.setdefault("sqlite_synchronous", "NORMAL")
        engine = Engine(url or f"sqlite:///{tmp_path / 'engine.db'}", **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()
