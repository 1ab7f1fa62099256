"""The operator as the tests run it: ``aiplane operator``, a real subprocess against the test cluster.

Each test gets its own operator, so one that a test kills (kill -9) or replaces never leaks into the next. The
peering lifetime is short (a standby takes over a few seconds after the leader dies) and the rollout clock ticks
every second, so canaries with second-long intervals move promptly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aiplane.processes import stop_process_group
from crds import RESOURCES
from operators import peering
from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually

AIPLANE = Path(sys.executable).with_name("aiplane")
PEERING_LIFETIME_S = 5


@dataclass
class Operator:
    """One ``aiplane operator`` process; its JSON log lines are readable while it runs."""

    cluster: Cluster
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    #: More arguments of ``aiplane operator`` (e.g. ``--metrics-port``).
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        env = {
            **self.cluster.env,
            "AIPLANE_LOG_FORMAT": "json",
            "AIPLANE_ROLLOUT_TICK_S": "1",
            **self.extra_env,
        }
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [str(AIPLANE), "operator", "--peering-lifetime", str(PEERING_LIFETIME_S), *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return self

    def kill9(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        stop_process_group(self.process, 30)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def records(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return lines

    def applied(self, namespace: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("message") == "applied" and r.get("model", "").startswith(namespace)]


@pytest.fixture(scope="session")
def crds_installed(cluster: Cluster) -> Cluster:
    crds = subprocess.run([str(AIPLANE), "crds"], capture_output=True, text=True, check=True).stdout
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crds)
    names = [r.crd_name() for r in RESOURCES] + [c["metadata"]["name"] for c in peering.crds()]
    for name in names:
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    return cluster


def wait_leading(op: Operator) -> None:
    """Until the operator has taken the lead (kopf logs when it resumes after the start-up pause)."""

    def leading() -> None:
        assert op.alive, f"the operator exited; log: {op.log_path.read_text()[-3000:]}"
        messages = [r.get("message", "") for r in op.records()]
        assert any("Resuming operations" in m for m in messages), "not leading yet"

    assert_eventually(leading, timeout=60)


@pytest.fixture
def start_operator(crds_installed: Cluster, tmp_path: Path) -> Iterator[Any]:
    started: list[Operator] = []

    def start(name: str = "operator", *, args: tuple[str, ...] = (), **env: str) -> Operator:
        op = Operator(crds_installed, tmp_path / f"{name}-{len(started)}.log", extra_env=env, args=args).start()
        started.append(op)
        return op

    try:
        yield start
    finally:
        for op in started:
            op.stop()


@pytest.fixture
def operator(start_operator: Any) -> Operator:
    op: Operator = start_operator()
    wait_leading(op)
    return op
