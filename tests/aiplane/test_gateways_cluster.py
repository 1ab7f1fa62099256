"""Two ``aiplane gateway --from-cluster NAMESPACE`` processes on one PostgreSQL, as the chart's replicas run: the
namespace's Policy limits a tenant's rate and its tasks in flight once for both, not once per process."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from aiplane.modelserver import free_port
from aiplane.processes import stop_process_group
from api import create_api_key
from crds import checks
from crds.workflow import WorkflowSpec
from engine import Engine
from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually
from tests.operators.conftest import AIPLANE, crds_installed

__all__ = ["crds_installed"]

NOW = "2026-01-01T00:00:00Z"
WORKFLOW: dict[str, Any] = {
    "apiVersion": "aiplane.io/v1alpha1",
    "kind": "Workflow",
    "metadata": {"name": "note"},
    "spec": {"steps": [{"name": "note", "type": "rules", "rules": {"set": {"seen": "true"}}}]},
}
POLICY = {
    "apiVersion": "aiplane.io/v1alpha1",
    "kind": "Policy",
    "metadata": {"name": "limits"},
    # A burst of 4 and next to no refill; 3 tasks in flight (no worker runs: accepted tasks stay queued).
    "spec": {"rateLimits": [{"requestsPerSecond": 0.001, "burst": 4}], "quota": {"maxTasksInFlight": 3}},
}


@pytest.fixture
def gateways(
    crds_installed: Cluster, k8s_namespace: str, pg_url: str, tmp_path: Path
) -> Iterator[tuple[list[str], str]]:
    for manifest in (WORKFLOW, POLICY):
        crds_installed.kubectl("apply", "-n", k8s_namespace, "-f", "-", input=yaml.safe_dump(manifest))
    # Valid, as the Workflow operator (not running here) would say: what the gateways register at start.
    status = {
        "status": {
            "version": checks.version_of(WorkflowSpec.model_validate(WORKFLOW["spec"])),
            "observedGeneration": 1,
            "conditions": [
                {"type": "Valid", "status": "True", "reason": "Valid", "message": "ok", "lastTransitionTime": NOW}
            ],
        }
    }
    crds_installed.kubectl(
        "patch", "-n", k8s_namespace, "aiw", "note", "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    engine = Engine(pg_url, data_dir=tmp_path / "data")
    key = create_api_key(engine, "acme", "alice", ["submitter"])
    engine.close()
    env = {**crds_installed.env, "AIPLANE_DATABASE_URL": pg_url, "AIPLANE_DATA_DIR": str(tmp_path / "data")}
    log_path = tmp_path / "gateways.log"
    log = log_path.open("ab")
    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen(
            [str(AIPLANE), "gateway", "--host", "127.0.0.1", "--port", str(port), "--from-cluster", k8s_namespace],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tmp_path,
        )
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]

    def up() -> None:
        for process in processes:
            assert process.poll() is None, log_path.read_text()[-4000:]
        for url in urls:
            try:
                assert httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError as error:
                raise AssertionError(f"gateway not listening yet: {error}") from error

    try:
        assert_eventually(up, timeout=120, message="both gateways up")
        yield urls, key
    finally:
        for process in processes:
            stop_process_group(process, 30)
        log.close()


def test_two_gateway_processes_hold_one_rate_limit_and_one_quota(gateways: tuple[list[str], str]) -> None:
    urls, key = gateways
    headers = {"Authorization": f"Bearer {key}"}
    body = {"workflow": {"name": "note"}, "input": {}}

    # Each gateway listed the namespace's Workflow and Policy before it answered /readyz.
    answers = []
    for n in range(6):  # alternating between the two processes
        response = httpx.post(f"{urls[n % 2]}/v1/tasks", json=body, headers=headers, timeout=30)
        answers.append((response.status_code, response.json().get("type", "").rsplit("/", 1)[-1]))
    # 3 in flight, then the quota (its request spent the 4th token), then the rate limit: on both processes.
    assert [status for status, _ in answers] == [202, 202, 202, 429, 429, 429], answers
    assert [kind for _, kind in answers[3:]] == ["quota-exceeded", "rate-limited", "rate-limited"]
