"""How long Idempotency-Keys are kept: 24 h unless ``AIPLANE_IDEMPOTENCY_TTL`` says otherwise (the chart's
``gateway.idempotencyTTL``). On a controllable clock: a replay before expiry gets the stored first response, the
same key after expiry makes a new task, and the purge of expired keys deletes only expired rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from aiplane.cli import main
from aiplane.components import gateway_app
from api import GatewaySettings, create_api_key, create_app
from api.settings import IDEMPOTENCY_TTL_ENV
from engine import Engine
from engine.store.schema import idempotency_keys, tasks
from tests.api.conftest import auth
from tests.fixtures.clocks import SettableClock

START = datetime(2026, 1, 1, tzinfo=UTC)
RULES = {"steps": [{"name": "r", "type": "rules", "rules": {"set": {"seen": "input.name"}}}]}
BODY = {"workflow": {"name": "rules"}, "input": {"name": "a"}}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Engine, SettableClock[datetime]]]:
    clock = SettableClock(START)
    engine = Engine(f"sqlite:///{tmp_path / 'engine.db'}", data_dir=tmp_path / "data", clock=clock)
    engine.register_workflow("rules", RULES)
    yield engine, clock
    engine.close()


def test_default_is_24_hours_and_the_environment_sets_it() -> None:
    assert GatewaySettings().idempotency_ttl == timedelta(hours=24)
    assert GatewaySettings.from_env({}).idempotency_ttl == timedelta(hours=24)
    assert GatewaySettings.from_env({IDEMPOTENCY_TTL_ENV: "90m"}).idempotency_ttl == timedelta(minutes=90)
    assert GatewaySettings.from_env({IDEMPOTENCY_TTL_ENV: "7d"}, public_base_url="https://x").public_base_url == (
        "https://x"
    )


@pytest.mark.parametrize("value", ["24", "1 day", "-1h", "0s"])
def test_a_bad_value_names_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match=IDEMPOTENCY_TTL_ENV):
        GatewaySettings.from_env({IDEMPOTENCY_TTL_ENV: value})


def test_the_served_gateway_takes_it_from_the_environment(setup: tuple[Engine, SettableClock[datetime]]) -> None:
    engine, _ = setup
    assert gateway_app(engine, environ={}).state.gateway.idempotency.ttl == timedelta(hours=24)
    app = gateway_app(engine, environ={IDEMPOTENCY_TTL_ENV: "2h"})
    assert app.state.gateway.idempotency.ttl == timedelta(hours=2)


def test_the_flag_wins_over_the_environment(setup: tuple[Engine, SettableClock[datetime]]) -> None:
    engine, _ = setup
    app = gateway_app(engine, environ={IDEMPOTENCY_TTL_ENV: "2h"}, idempotency_ttl=timedelta(minutes=5))
    assert app.state.gateway.idempotency.ttl == timedelta(minutes=5)


def test_aiplane_gateway_refuses_a_bad_ttl_before_starting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["gateway", "--idempotency-ttl", "1 day"])
    assert exited.value.code == 2
    assert "--idempotency-ttl" in capsys.readouterr().err
    monkeypatch.setenv(IDEMPOTENCY_TTL_ENV, "soon")
    assert main(["gateway", "--db", f"sqlite:///{tmp_path / 'never.db'}"]) == 2
    assert IDEMPOTENCY_TTL_ENV in capsys.readouterr().err
    assert not (tmp_path / "never.db").exists()


def test_a_key_replays_until_it_expires_then_makes_a_new_task(setup: tuple[Engine, SettableClock[datetime]]) -> None:
    engine, clock = setup
    key = create_api_key(engine, "acme", "alice", ["submitter"])
    app = create_app(engine, GatewaySettings.from_env({IDEMPOTENCY_TTL_ENV: "1h"}))
    headers = auth(key, **{"Idempotency-Key": "order-1"})
    with TestClient(app) as client:
        first = client.post("/v1/tasks", json=BODY, headers=headers)
        assert first.status_code == 202, first.text
        clock.now = START + timedelta(minutes=59)
        replay = client.post("/v1/tasks", json=BODY, headers=headers)
        assert (replay.status_code, replay.json()) == (202, first.json())
        clock.now = START + timedelta(hours=1, seconds=1)
        after = client.post("/v1/tasks", json=BODY, headers=headers)
        assert after.status_code == 202, after.text
    assert after.json()["id"] != first.json()["id"]
    with engine.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar_one() == 2
        row = conn.execute(sa.select(idempotency_keys)).one()
    assert row.expires_at == START + timedelta(hours=2, seconds=1)


def test_the_purge_deletes_only_expired_keys(setup: tuple[Engine, SettableClock[datetime]]) -> None:
    engine, clock = setup
    key = create_api_key(engine, "acme", "alice", ["submitter"])
    app = create_app(engine, GatewaySettings.from_env({IDEMPOTENCY_TTL_ENV: "1h"}))
    with TestClient(app) as client:
        for minute, name in ((0, "old"), (30, "newer")):
            clock.now = START + timedelta(minutes=minute)
            headers = auth(key, **{"Idempotency-Key": name})
            assert client.post("/v1/tasks", json=BODY, headers=headers).status_code == 202
    store = app.state.gateway.idempotency

    assert store.purge_expired(START + timedelta(minutes=59)) == 0
    assert store.purge_expired(START + timedelta(minutes=61)) == 1
    with engine.db.read() as conn:
        assert [r.key for r in conn.execute(sa.select(idempotency_keys))] == ["newer"]

    # The workers' maintenance round purges by the same rule, on the engine's clock.
    clock.now = START + timedelta(minutes=89)
    engine.worker()._purge_expired_keys()
    with engine.db.read() as conn:
        assert [r.key for r in conn.execute(sa.select(idempotency_keys))] == ["newer"]
    clock.now = START + timedelta(minutes=91)
    engine.worker()._purge_expired_keys()
    with engine.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(idempotency_keys)).scalar_one() == 0
