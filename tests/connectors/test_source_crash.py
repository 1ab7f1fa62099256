"""A source process killed mid-stream loses and duplicates nothing: after a restart every message is exactly one
task, and, end to end (claims-in → source → tasks → kafkaSink step → claims-out), exactly one result record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.kafka import KafkaRecordSink
from engine import Engine, StaticConnectorResolver, TaskState, WorkerConfig
from engine.store.schema import tasks
from tests.connectors.crashing_source import CRASH_EXIT
from tests.connectors.kafkaio import committed, produce, read_all
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually

REPO = Path(__file__).resolve().parents[2]
TENANT = "acme"
# The broker's least: a killed source's partitions go to its successor this soon.
SESSION_TIMEOUT = 6.0


class Processes:
    """Source processes started by a test, stopped (killed if need be) at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"source-{len(self.started)}.log").open("wb")
        process = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.started.append(process)
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        return (self.tmp_path / f"source-{self.started.index(process)}.log").read_text()

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    running = Processes(tmp_path)
    yield running
    running.stop_all()


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, Path]:
    return f"sqlite:///{tmp_path / 'engine.db'}", tmp_path / "data"


def source_args(db_url: str, data_dir: Path, connector: str, spec: dict[str, Any], batch_size: int) -> list[str]:
    return [
        "-m", "connectors.kafka", "source", "--connector", connector, "--tenant", TENANT, "--spec", json.dumps(spec),
        "--db-url", db_url, "--data-dir", str(data_dir), "--batch-size", str(batch_size),
        "--session-timeout", str(SESSION_TIMEOUT),
    ]  # fmt: skip


def task_count(engine: Engine) -> int:
    with engine.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar_one())


def task_keys(engine: Engine) -> list[str]:
    with engine.db.read() as conn:
        return [row.idempotency_key for row in conn.execute(sa.select(tasks.c.idempotency_key))]


def test_a_crash_after_storing_a_batch_before_committing_it_neither_loses_nor_duplicates(
    kafka: Kafka, store: tuple[str, Path], processes: Processes
) -> None:
    db_url, data_dir = store
    engine = Engine(db_url, data_dir=data_dir, sqlite_synchronous="NORMAL")
    engine.register_workflow("claims", {"steps": [{"name": "noop", "type": "rules", "rules": {"set": {"x": "1"}}}]})
    topic = kafka.new_topic(partitions=3, prefix="claims-in")
    total = 200
    produce(kafka.bootstrap_servers, topic, [{"claimId": f"C-{n}"} for n in range(total)])
    connector = f"claims-{uuid.uuid4().hex[:6]}"
    group = f"aiplane-{connector}"
    spec = {"bootstrapServers": kafka.bootstrap_servers, "topic": topic, "workflow": "claims"}
    config = {
        "db_url": db_url, "data_dir": str(data_dir), "connector": connector, "tenant": TENANT, "spec": spec,
        "batch_size": 20, "crash_after_batches": 3, "session_timeout": SESSION_TIMEOUT,
    }  # fmt: skip
    doomed = processes.start("-m", "tests.connectors.crashing_source", json.dumps(config))
    assert doomed.wait(timeout=120) == CRASH_EXIT, processes.log(doomed)
    stored, done = task_count(engine), committed(kafka.bootstrap_servers, group, topic)
    # The crash hit the window: the last batch is in the store but its offsets are not committed.
    assert 0 < done < stored < total

    restarted = processes.start(*source_args(db_url, data_dir, connector, spec, batch_size=20))
    assert_eventually(lambda: committed(kafka.bootstrap_servers, group, topic) == total, timeout=120, interval=0.2)
    keys = task_keys(engine)
    assert len(keys) == total
    assert Counter(key.rsplit("/", 2)[1] for key in keys) == Counter(
        str(record.partition) for record in read_all(kafka.bootstrap_servers, topic, total)
    )
    assert len(set(keys)) == total
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(timeout=60) == 0, processes.log(restarted)
    engine.close()


def test_claims_in_to_claims_out_exactly_once_through_a_kill_9_of_the_source(
    kafka: Kafka, store: tuple[str, Path], processes: Processes
) -> None:
    db_url, data_dir = store
    claims_in = kafka.new_topic(partitions=3, prefix="claims-in")
    claims_out = kafka.new_topic(partitions=3, prefix="claims-out")
    sink = KafkaRecordSink(kafka.bootstrap_servers)
    connectors = StaticConnectorResolver(
        {
            "claims-out": {
                "type": "kafkaSink",
                "kafkaSink": {"bootstrapServers": kafka.bootstrap_servers, "topic": claims_out, "key": "input.claimId"},
            }
        }
    )
    engine = Engine(db_url, data_dir=data_dir, sqlite_synchronous="NORMAL", connector_resolver=connectors, sink=sink)
    engine.register_workflow(
        "claims",
        {
            "steps": [
                {"name": "decide", "type": "rules", "rules": {"set": {"big": "input.amount > 1000.0"}}},
                {
                    "name": "publish",
                    "type": "connector",
                    "connector": {"name": "claims-out", "input": {"claimId": "input.claimId", "big": "vars.big"}},
                    "end": True,
                },
            ]
        },
    )
    first, second = 150, 150
    produce(kafka.bootstrap_servers, claims_in, [{"claimId": f"C-{n}", "amount": n * 10.0} for n in range(first)])
    connector = f"claims-{uuid.uuid4().hex[:6]}"
    spec = {
        "bootstrapServers": kafka.bootstrap_servers, "topic": claims_in, "workflow": "claims",
        "idempotencyKey": "value.claimId",
    }  # fmt: skip
    with engine.worker(WorkerConfig(poll_interval=0.02, concurrency=4)):
        doomed = processes.start(*source_args(db_url, data_dir, connector, spec, batch_size=25))
        assert_eventually(lambda: task_count(engine) >= 25, timeout=120, interval=0.01)
        os.kill(doomed.pid, signal.SIGKILL)
        assert doomed.wait(timeout=30) == -signal.SIGKILL
        # Claims keep arriving while the source is down.
        produce(
            kafka.bootstrap_servers,
            claims_in,
            [{"claimId": f"C-{n}", "amount": 1.0} for n in range(first, first + second)],
        )
        processes.start(*source_args(db_url, data_dir, connector, spec, batch_size=25))
        total = first + second

        def all_succeeded() -> None:
            page = engine.list(TENANT, state=TaskState.SUCCEEDED, limit=1)
            assert task_count(engine) == total
            assert page.items
            with engine.db.read() as conn:
                left = conn.execute(
                    sa.select(sa.func.count()).select_from(tasks).where(tasks.c.state != TaskState.SUCCEEDED)
                ).scalar_one()
            assert left == 0, f"{left} tasks not succeeded yet"

        assert_eventually(all_succeeded, timeout=180, interval=0.2)
    assert sorted(task_keys(engine)) == sorted(f"C-{n}" for n in range(total))
    assert_eventually(
        lambda: committed(kafka.bootstrap_servers, f"aiplane-{connector}", claims_in) == total, timeout=60, interval=0.2
    )
    records = read_all(kafka.bootstrap_servers, claims_out, total)
    per_claim = Counter(record.key.decode() for record in records)
    assert per_claim == Counter({f"C-{n}": 1 for n in range(total)})
    assert {json.loads(record.value)["claimId"] for record in records} == set(per_claim)
    sink.close()
    engine.close()
