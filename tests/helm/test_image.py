"""The container image, as far as it can be tested without a container engine: the Containerfile's rules, and
every entrypoint the chart uses started from the installed wheel (not from this checkout)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from aiplane.modelserver import free_port
from aiplane.processes import stop_process_group
from engine.store.audit import AuditLog
from engine.store.database import Database
from engine.store.migrate import upgrade
from engine.store.schema import audit_log
from tests.fixtures.polling import assert_eventually
from tests.helm.chart import REPO_ROOT, objects, pod_specs, render

CONTAINERFILE = REPO_ROOT / "Containerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_containerfile_pins_its_base_and_runs_as_the_charts_user() -> None:
    steps = _instructions()
    base = next(value for op, value in steps if op == "ARG" and value.startswith("PYTHON_IMAGE="))
    # An exact Python and Debian release, never a floating tag.
    assert re.fullmatch(r"PYTHON_IMAGE=docker\.io/library/python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base)
    assert all(value.startswith("${PYTHON_IMAGE}") for op, value in steps if op == "FROM")
    users = [value for op, value in steps if op == "USER"]
    assert users == ["10001:10001"], "the last stage must run as the non-root user"
    assert [value for op, value in steps if op == "ENTRYPOINT"] == ['["aiplane"]']
    assert any(op == "RUN" and "-c constraints.txt" in value for op, value in steps)
    # The chart runs the image as that same user.
    for _, spec in pod_specs(objects(render())):
        if spec["containers"][0]["image"].startswith("ghcr.io/aiplane/aiplane"):
            assert spec["securityContext"]["runAsUser"] == 10001


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the built wheel installed. Its dependencies come from this checkout's virtualenv
    (added as a plain path, so the editable install's import hook stays out), to stay offline and fast."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root), "."],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = root.glob("aiplane-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "aiplane-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return venv


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_packages_come_from_the_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    code = "import aiplane, api, engine, operators, connectors, crds, policies, planners.service; print(api.__file__)"
    proc = _run(wheel_venv, "python", "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(wheel_venv)), proc.stdout


@pytest.mark.parametrize(
    "command",
    [
        ("aiplane", "--help"),
        ("aiplane", "gateway", "--help"),
        ("aiplane", "worker", "--help"),
        ("aiplane", "operator", "--help"),
        # Governed Kafka consumer pods (operators/connector/builders.py), ungoverned ones.
        ("aiplane", "kafka-source", "--help"),
        ("python", "-m", "connectors.kafka", "source", "--help"),
    ],
)
def test_every_entrypoint_answers_help(wheel_venv: Path, tmp_path: Path, command: tuple[str, ...]) -> None:
    proc = _run(wheel_venv, *command, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_the_crds_ship_in_the_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    proc = _run(wheel_venv, "aiplane", "crds", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    kinds = {doc["spec"]["names"]["kind"] for doc in objects(proc.stdout)}
    assert {"Model", "Workflow", "Connector", "Policy", "ClusterKopfPeering"} <= kinds


def test_a_store_is_required(wheel_venv: Path, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "AIPLANE_DATABASE_URL"}
    proc = subprocess.run(
        [str(wheel_venv / "bin" / "aiplane"), "worker"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "AIPLANE_DATABASE_URL" in proc.stderr


@pytest.fixture
def started(wheel_venv: Path, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; each must exit cleanly on SIGTERM (uvicorn re-raises the signal once it has
    drained, so the gateway's clean exit is -SIGTERM)."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        assert process.wait(timeout=60) in {0, -signal.SIGTERM}, f"{process.args!r} exited {process.returncode}"


def test_gateway_and_worker_start_from_the_wheel(
    wheel_venv: Path, tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """The chart's two store-backed entrypoints, as the pods run them (store URL from the environment)."""
    gateway_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "AIPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'engine.db'}",
        "AIPLANE_DATA_DIR": str(tmp_path),
        "AIPLANE_LOG_FORMAT": "text",
    }
    aiplane = str(wheel_venv / "bin" / "aiplane")
    log = (tmp_path / "processes.log").open("wb")
    started.append(
        subprocess.Popen(
            [aiplane, "gateway", "--host", "127.0.0.1", "--port", str(gateway_port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )

    def gateway_ready() -> None:
        assert started[0].poll() is None, (tmp_path / "processes.log").read_text()
        assert httpx.get(f"http://127.0.0.1:{gateway_port}/readyz", timeout=2).status_code == 200

    assert_eventually(gateway_ready, timeout=240, retry_on=(AssertionError, httpx.TransportError))
    started.append(
        subprocess.Popen(
            [aiplane, "worker", "--metrics-host", "127.0.0.1", f"--metrics-port={metrics_port}"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )

    def worker_metrics() -> None:
        assert started[1].poll() is None, (tmp_path / "processes.log").read_text()
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
        assert "aiplane_engine_queue_length_steps" in text

    assert_eventually(worker_metrics, timeout=240, retry_on=(AssertionError, httpx.TransportError))


def test_audit_verify_runs_from_the_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    """The audit verify CronJob's command, with the store's URL from the environment as the chart gives it."""
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    db = Database(url)
    upgrade(db)
    for i in range(3):
        AuditLog(db).append("approval", f"task/T{i}", "approve", {"i": i}, tenant="acme", actor="alice")
    env = {**os.environ, "AIPLANE_DATABASE_URL": url}
    verify = [str(wheel_venv / "bin" / "aiplane"), "audit", "verify"]
    proc = subprocess.run(verify, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "audit log intact: 3 records" in proc.stdout
    with db.write() as conn:
        conn.execute(sa.update(audit_log).where(audit_log.c.seq == 2).values(actor="mallory"))
    db.dispose()
    proc = subprocess.run(verify, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr


def test_the_shipped_planner_serves_from_the_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    """What a Model without spec.image runs in aiplane's image (operators/model/builders.py): `bentoml serve` of
    the shipped planner, imported from the installed wheel, until it answers /readyz."""
    port = free_port()
    log = tmp_path / "bentoml.log"
    command = ["-m", "bentoml", "serve", "planners.service:ScriptedPlanner", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        [str(wheel_venv / "bin" / "python"), *command],
        cwd=tmp_path,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def ready() -> None:
            assert process.poll() is None, log.read_text()
            assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200

        assert_eventually(ready, timeout=240, retry_on=(AssertionError, httpx.TransportError))
    finally:
        stop_process_group(process, 30)
