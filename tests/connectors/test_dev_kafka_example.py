"""``aiplane dev --kafka HOST:PORT`` on the example as shipped: ``examples/claims-triage`` with its Policy, its
claims extractor under ``bentoml serve``, and its Kafka Connectors (``claims-intake`` on ``claims-in`` with the
dead-letter topic ``claims-in.dlq``, ``claims-decisions`` on ``claims-out``), started through the CLI flag as a
process of its own.

Claims put on ``claims-in`` become tasks; each decision lands on ``claims-out`` exactly once (counted record by
record once every task finished, duplicates included), a large claim only after an approver's decision; a message
that is not JSON and one the workflow's schema refuses land on ``claims-in.dlq`` with their reasons; the tasks'
events are on the bus topic. The example's topics are shared by every run on the broker, so this run's claims carry
ids of their own and only those are counted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiplane.client import Client
from aiplane.demo import LARGE_CLAIM, SMALL_CLAIM
from aiplane.modelserver import free_port
from aiplane.processes import stop_process_group
from connectors.kafka import DEFAULT_EVENTS_TOPIC, codec
from connectors.kafka.deadletter import HEADER_CONNECTOR, HEADER_REASON, HEADER_TOPIC, INVALID, MALFORMED
from tests.connectors.kafkaio import headers, produce, read_to_end
from tests.fixtures.kafka import Kafka
from tests.fixtures.polling import assert_eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "claims-triage"
AIPLANE = Path(sys.executable).with_name("aiplane")
# The example's Connectors' topics.
CLAIMS_IN, CLAIMS_OUT, DEAD_LETTERS = "claims-in", "claims-out", "claims-in.dlq"


@dataclass(frozen=True)
class Dev:
    url: str
    key: str

    def client(self) -> Client:
        return Client(self.url, self.key)

    def tasks(self) -> list[dict[str, Any]]:
        """Every task of the dev tenant, with its idempotency key (the claim id a Kafka task was made with)."""
        auth = {"Authorization": f"Bearer {self.key}"}
        page = httpx.get(f"{self.url}/v1/tasks", params={"limit": 500}, headers=auth, timeout=30).json()
        return [httpx.get(f"{self.url}/v1/tasks/{t['id']}", headers=auth, timeout=30).json() for t in page["items"]]


@pytest.fixture
def dev(kafka: Kafka, tmp_path: Path) -> Iterator[Dev]:
    """``aiplane dev --examples examples/claims-triage --kafka <the test broker>``, until the test ends."""
    port = free_port()
    out = tmp_path / "dev.out"
    with out.open("wb") as stdout, (tmp_path / "dev.err").open("wb") as stderr:
        process = subprocess.Popen(
            [
                str(AIPLANE),
                "dev",
                "--examples",
                str(EXAMPLE),
                "--kafka",
                kafka.bootstrap_servers,
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            cwd=REPO,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # stop_process_group signals its group (the model servers too), not the tests
        )
    try:

        def started() -> str:
            assert process.poll() is None, (tmp_path / "dev.err").read_text()[-3000:]
            lines = [line for line in out.read_text().splitlines() if line.startswith("API key: ")]
            assert lines, "aiplane dev has not printed its API key yet"
            return lines[0].removeprefix("API key: ").strip()

        # Model servers start first (the claims model loads, the portal stand-in starts): minutes on a busy machine.
        key = assert_eventually(started, timeout=300, interval=0.5)
        dev = Dev(f"http://127.0.0.1:{port}", key)
        assert_eventually(lambda: dev.client().approvals() is not None, timeout=60, retry_on=(Exception,))
        assert f"Kafka: events on {DEFAULT_EVENTS_TOPIC} at {kafka.bootstrap_servers}" in out.read_text()
        yield dev
    finally:
        stop_process_group(process, 30, signal.SIGINT)


def test_dev_with_kafka_runs_the_example_claims_case_event_first(kafka: Kafka, dev: Dev) -> None:
    run = uuid.uuid4().hex[:8]
    small = [{**SMALL_CLAIM, "claimId": f"CLM-{run}-{n}"} for n in range(4)]
    large = {**LARGE_CLAIM, "claimId": f"CLM-{run}-large"}
    claims = [*small, large]
    not_json = f"not json {run} {{".encode()
    no_document = {"claimId": f"CLM-{run}-nodoc", "note": "the document is missing"}
    produce(kafka.bootstrap_servers, CLAIMS_IN, claims)
    produce(kafka.bootstrap_servers, CLAIMS_IN, [not_json], raw=True)
    produce(kafka.bootstrap_servers, CLAIMS_IN, [no_document])

    def mine() -> dict[str, dict[str, Any]]:
        """This run's tasks by claim id (the kafkaSource's idempotency key)."""
        ours = {c["claimId"] for c in claims}
        return {t["idempotencyKey"]: t for t in dev.tasks() if t.get("idempotencyKey") in ours}

    # The large claim waits at the example's review step for an approver; the small ones need nobody.
    def large_waits() -> str:
        tasks = mine()
        assert tasks.get(large["claimId"], {}).get("state") == "waiting", tasks.get(large["claimId"])
        (approval,) = [a for a in dev.client().approvals()["items"] if a["taskId"] == tasks[large["claimId"]]["id"]]
        return str(approval["id"])

    approval = assert_eventually(large_waits, timeout=180, interval=0.5)
    assert large["claimId"] not in {record.key.decode() for record in read_to_end(kafka.bootstrap_servers, CLAIMS_OUT)}
    dev.client().approve(approval, "checked the contractor's estimate")

    def all_succeeded() -> dict[str, dict[str, Any]]:
        tasks = mine()
        assert {claim_id: t["state"] for claim_id, t in tasks.items()} == {c["claimId"]: "succeeded" for c in claims}
        return tasks

    tasks = assert_eventually(all_succeeded, timeout=180, interval=0.5)

    # Every task finished, so every decision it publishes is on claims-out by now: count them, duplicates included.
    decisions = [
        (record.key.decode(), json.loads(record.value))
        for record in read_to_end(kafka.bootstrap_servers, CLAIMS_OUT)
        if record.key is not None and record.key.decode().startswith(f"CLM-{run}-")
    ]
    assert sorted(key for key, _ in decisions) == sorted(c["claimId"] for c in claims)
    for key, value in decisions:
        assert value["claimId"] == key
        assert value["amount"] == (48500.0 if key == large["claimId"] else 1240.0)

    def dead_lettered() -> dict[bytes, dict[str, str]]:
        found = {
            record.value: headers(record)
            for record in read_to_end(kafka.bootstrap_servers, DEAD_LETTERS)
            if record.value == not_json or record.value == json.dumps(no_document).encode()
        }
        assert len(found) == 2, f"{len(found)} of this run's 2 refused messages on {DEAD_LETTERS}"
        return found

    refused = assert_eventually(dead_lettered, timeout=60, interval=0.5)
    assert refused[not_json][HEADER_REASON] == MALFORMED
    assert refused[json.dumps(no_document).encode()][HEADER_REASON] == INVALID
    assert {(h[HEADER_CONNECTOR], h[HEADER_TOPIC]) for h in refused.values()} == {("claims-intake", CLAIMS_IN)}

    # The broker is the bus too: each task's events, through its completion, are on the events topic.
    task_ids = {t["id"] for t in tasks.values()}

    def completions_on_the_bus() -> None:
        events = [codec.decode(r.value) for r in read_to_end(kafka.bootstrap_servers, DEFAULT_EVENTS_TOPIC)]
        completed = {e.task_id for e in events if e.type == "task.completed" and e.task_id in task_ids}
        assert completed == task_ids

    assert_eventually(completions_on_the_bus, timeout=60, interval=0.5)
