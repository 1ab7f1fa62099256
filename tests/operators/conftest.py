"""The operator as the tests run it: ``aiplane operator``, a real subprocess against the test cluster.

Each test gets its own operator, so one that a test kills (kill -9) or replaces never leaks into the next. The
peering lifetime is short (a standby takes over a few seconds after the leader dies) and the rollout clock ticks
every second, so canaries with second-long intervals move promptly. The canary tests share their real serving
side here: ``claims_servers`` (``bentoml serve`` per version, one failing on purpose), the ``gateway`` routing by
``status.endpoints`` and scraped by Prometheus, and ``start_analysing_operator``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aiplane.kubemodels import KubeModelResolver
from aiplane.modelserver import ModelServer, free_port
from aiplane.processes import stop_process_group
from api import GatewaySettings, create_api_key, create_app
from crds import RESOURCES
from engine import Engine
from operators import peering
from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually
from tests.fixtures.prometheus import Prometheus
from tests.operators.serving import Served, claims_server

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


@pytest.fixture(scope="module")
def claims_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModelServer]]:
    """Version -> a running ``bentoml serve``: 1.0.0 and 2.0.0 healthy, 3.0.0 failing every request, 4.0.0 slow
    (300 ms a request), 5.0.0 drifting (every other answer's claim_type is travel)."""
    logs = tmp_path_factory.mktemp("bentoml")
    servers = {
        "1.0.0": claims_server(logs, "v1"),
        "2.0.0": claims_server(logs, "v2"),
        "3.0.0": claims_server(logs, "v3", AIPLANE_CLAIMS_ERROR_RATE="1.0"),
        "4.0.0": claims_server(logs, "v4", AIPLANE_CLAIMS_DELAY_MS="300"),
        "5.0.0": claims_server(logs, "v5", AIPLANE_CLAIMS_DRIFT_RATE="0.5", AIPLANE_CLAIMS_DRIFT_CLASS="travel"),
    }
    errors: list[BaseException] = []

    def start(server: ModelServer) -> None:
        try:
            server.start(ready_timeout=300)
        except BaseException as error:
            errors.append(error)

    # The first one alone: on a cold cache it trains the weights, which the others then load (three processes
    # training into the same folder at once could trip over each other's files).
    first, *rest = servers.values()
    start(first)
    threads = [threading.Thread(target=start, args=(s,)) for s in rest]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert not errors, errors
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@dataclass(frozen=True)
class Gateway:
    url: str
    api_key: str
    prometheus: Prometheus


@pytest.fixture
def gateway(crds_installed: Cluster, k8s_namespace: str, prometheus: Prometheus, tmp_path: Path) -> Iterator[Gateway]:
    """The gateway for ``k8s_namespace``'s Models, scraped by Prometheus."""
    resolver = KubeModelResolver(crds_installed.api_client(), k8s_namespace).start()
    engine = Engine(f"sqlite:///{tmp_path / 'engine.db'}", model_resolver=resolver)
    key = create_api_key(engine, "acme", "alice", ["submitter"])
    served = Served(create_app(engine, GatewaySettings()))
    target = prometheus.scrape(served.address, namespace=k8s_namespace)
    try:
        yield Gateway(served.url, key, prometheus)
    finally:
        target.unlink()
        served.close()
        resolver.stop()
        engine.close()


@pytest.fixture
def start_analysing_operator(gateway: Gateway, start_operator: Any) -> Iterator[Callable[..., Operator]]:
    """Operators whose analysis reads the gateway's Prometheus, which scrapes their own /metrics too (the rollback
    counter and the weights); ``env`` adds settings (AIPLANE_DATABASE_URL, ...)."""
    targets: list[Path] = []

    def start(name: str = "operator", **env: str) -> Operator:
        port = free_port()
        targets.append(gateway.prometheus.scrape(f"127.0.0.1:{port}", job="aiplane-operator"))
        args = ("--metrics-host", "127.0.0.1", f"--metrics-port={port}")
        operator: Operator = start_operator(
            name,
            args=args,
            AIPLANE_PROMETHEUS_URL=gateway.prometheus.url,
            # The versions are served by local bentoml processes (see tests.operators.serving).
            AIPLANE_ENDPOINT_URLS_ANNOTATION="true",
            **env,
        )
        return operator

    try:
        yield start
    finally:
        for target in targets:
            target.unlink()
