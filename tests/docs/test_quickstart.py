"""The quick start runs as written: every marked console block of docs/quickstart.md, in order.

The embedded part runs `make demo`, then `aiplane dev` as a real process and the CLI lines against it, with the
port and data dir the page shows replaced by a free port and a temporary folder and each ``<...>`` replaced by the id
the previous commands printed (what a reader copies). The cluster part applies the CRDs and the example on the test
cluster, in a namespace of its own. The Helm block is the try-out of docs/operations.md, which
tests/docs/test_operations.py installs and removes on the test cluster: here it must stay that block, word for word.
`make setup` is CI's first step, so it is not run again here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aiplane.client import Client
from aiplane.modelserver import free_port
from aiplane.processes import stop_process_group
from tests.docs import test_operations
from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE = REPO_ROOT / "docs" / "quickstart.md"
MARKED_BLOCK = re.compile(r"<!-- tested[^>]*-->\s*```console\n(.*?)```", re.DOTALL)
DOC_PORT, DOC_DATA_DIR = "8080", ".run/dev"


def blocks() -> list[list[str]]:
    """Each marked block's commands, comments after `` # `` dropped (a ``#`` inside quotes stays)."""
    found = MARKED_BLOCK.findall(PAGE.read_text())
    assert len(found) == 6, "the quick start's tested blocks went missing or grew: update this test"
    return [[_command(line) for line in block.splitlines() if line.strip()] for block in found]


def _command(line: str) -> str:
    """The line without its trailing comment: the first `` # `` outside quotes."""
    for match in re.finditer(r"\s+#\s", line):
        before = line[: match.start()]
        if before.count("'") % 2 == 0 and before.count('"') % 2 == 0:
            return before.strip()
    return line.strip()


def test_readme_and_quick_start_agree() -> None:
    demo = blocks()[0]
    assert demo == ["make setup", "make demo"]
    readme = (REPO_ROOT / "README.md").read_text()
    assert "```console\nmake setup demo\n```" in readme


def test_helm_block_is_the_tested_try_out() -> None:
    helm = blocks()[5]
    operations = test_operations.MARKED_BLOCK.findall(test_operations.PAGE.read_text())[0]
    assert helm == [line.strip() for line in operations.splitlines() if line.strip()]


@pytest.mark.integration
def test_demo_runs_the_claims_case_end_to_end() -> None:
    _, demo = blocks()[0]
    result = _bash(demo, dict(os.environ), timeout=400)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "-> succeeded without a human" in out
    assert "is waiting at step review" in out
    assert "succeeded: published {'key': 'CLM-1002', 'topic': 'claims-out'}" in out
    # The trace reaches from the gateway through the engine to the model call.
    for span in (
        "aiplane.gateway.submit",
        "aiplane.engine.step",
        "aiplane.engine.model_call",
        "aiplane.gateway.approve",
    ):
        assert span in out
    # The claims-completion agent: the document request, the second reading, done.
    assert "proposal 1: request-document  allowed  -> succeeded" in out
    assert "proposal 2: extract           allowed  -> succeeded" in out
    assert "agent done after 3 proposals, cost 6: {" in out
    assert "'policyNumber': 'PL-55012345'" in out
    assert "== Done" in out


@dataclass(frozen=True)
class Dev:
    """A running `aiplane dev` of the page's line: its port, data dir, the key and what it printed before serving."""

    port: str
    data_dir: Path
    key: str
    printed: list[str]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    """The page's `aiplane dev` line as a process of its own, shared by this module's tests (one start of the model
    servers); yields once the gateway answers."""
    (line,) = blocks()[1]
    port = str(free_port())
    base = tmp_path_factory.mktemp("quickstart-dev")
    argv = shlex.split(_local(line, port, base))
    assert argv[:2] == [".venv/bin/aiplane", "dev"], argv
    process = subprocess.Popen(
        [str(REPO_ROOT / argv[0]), *argv[1:]],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=(base / "dev.err").open("wb"),
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        printed: list[str] = []
        # What it prints before it serves ends with the sample curl (the example has workflows).
        for raw in process.stdout:
            printed.append(raw.decode().rstrip("\n"))
            if printed[-1].lstrip().startswith("curl "):
                break
        key = next((p.removeprefix("API key: ") for p in printed if p.startswith("API key: ")), "")
        assert key, "\n".join(printed) + (base / "dev.err").read_text()
        client = Client(f"http://127.0.0.1:{port}", key)
        assert_eventually(lambda: client.approvals() is not None, timeout=120, retry_on=(Exception,))
        yield Dev(port, base / "dev", key, printed)
    finally:
        stop_process_group(process, 30, signal.SIGINT)


@pytest.mark.integration
def test_aiplane_dev_prints_its_url_and_a_curl_that_works(dev: Dev) -> None:
    url = f"http://127.0.0.1:{dev.port}"
    # As the page says: the gateway URL, one line `API key: <key>`, a sample curl; the data dir it was given.
    assert dev.printed[:3] == [
        f"aiplane dev: gateway on {url} (data in {dev.data_dir})",
        f"API key: {dev.key}",
        "Try:",
    ], dev.printed
    (curl,) = [line.strip() for line in dev.printed if line.lstrip().startswith("curl ")]
    assert f"'{url}/v1/tasks?mode=sync'" in curl
    assert f"'Authorization: Bearer {dev.key}'" in curl
    # Run as a reader pastes it: its small claim is extracted, decided by the rules and published, no human.
    proc = _bash(curl, dict(os.environ), timeout=120)
    assert proc.returncode == 0, proc.stderr
    task = json.loads(proc.stdout)
    assert task["state"] == "succeeded", task
    assert task["input"]["claimId"] == "C-1"
    assert task["result"], task
    # Everything it keeps is under --data-dir: SQLite (WAL) and the logs of the servers it started.
    assert (dev.data_dir / "engine.db").is_file()
    logs = {path.name for path in (dev.data_dir / "logs").iterdir()}
    assert "model-claims-extractor.log" in logs, logs
    assert (dev.data_dir / "logs" / "model-claims-extractor.log").stat().st_size > 0


@pytest.mark.integration
def test_the_cli_against_aiplane_dev(dev: Dev, tmp_path: Path) -> None:
    port, key = dev.port, dev.key
    env = {**os.environ, "PATH": f"{REPO_ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    ids = {"<key>": key}
    printed: list[tuple[str, Any]] = []  # each command and the JSON it printed
    for line in [*blocks()[2], *blocks()[3]]:
        command = _local(line, port, tmp_path)
        for placeholder, value in ids.items():
            command = command.replace(placeholder, value)
        assert not re.search(r"<[a-z-]+>", command), f"a placeholder no earlier command filled: {command}"
        if command.startswith("export "):
            for assignment in shlex.split(command.removeprefix("export ")):
                name, _, value = assignment.partition("=")
                env[name] = value
            continue
        proc = _bash(command, env, timeout=120)
        if command.startswith("aiplane replay"):
            # The page's task went through an approval, not the dead-letter queue: refused, as the page says.
            assert proc.returncode == 1, proc.stdout
            assert "409 Conflict: only dead-lettered tasks can be replayed" in proc.stderr
            continue
        assert proc.returncode == 0, f"{command}\n{proc.stderr}"
        output = json.loads(proc.stdout)
        printed.append((command, output))
        if command.startswith("aiplane submit"):
            ids["<task-id>"] = output["id"]
        elif command.startswith("aiplane approvals"):
            (pending,) = [a for a in output["items"] if a["taskId"] == ids["<task-id>"]]
            ids["<approval-id>"] = pending["id"]

    def out(prefix: str) -> list[Any]:
        return [output for command, output in printed if command.startswith(prefix)]

    # What the page says of them: the small claim finished within its --wait without a human, the large one waited
    # for the approval and then finished, detokenize opened its input, the agent completed the incomplete claim.
    small, large, completion = out("aiplane submit")
    assert (small["input"]["claimId"], small["state"]) == ("C-7", "succeeded")
    assert out("aiplane approve")[0]["state"] == "approved"
    trace, events = out("aiplane get")
    assert "aiplane.gateway.submit" in {span["name"] for span in trace["spans"]}
    assert events["items"]
    assert out("aiplane detokenize")[0]["value"]["input"]["claimId"] == "C-8"
    client = Client(f"http://127.0.0.1:{port}", key)
    for task_id in (large["id"], completion["id"]):
        assert_eventually(lambda: _state(client, task_id) == "succeeded", timeout=120)  # noqa: B023


@pytest.mark.integration
def test_the_resources_on_a_cluster(cluster: Cluster, tmp_path: Path) -> None:
    namespace = f"quickstart-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(cluster.kubeconfig.read_text())
    env = {
        **cluster.env,
        "KUBECONFIG": str(kubeconfig),
        "PATH": f"{REPO_ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
    }
    # The page's "current namespace": this test's own, so the shared cluster's other tests never see the example.
    assert _bash(f"kubectl config set-context --current --namespace={namespace}", env, 60).returncode == 0
    try:
        results = []
        for command in blocks()[4]:
            proc = _bash(command, env, timeout=120)
            assert proc.returncode == 0, f"{command}\n{proc.stderr}"
            results.append(proc.stdout)
        for name in ("claims-triage", "claims-extractor", "claims-governance"):
            assert name in results[-1], results[-1]
    finally:
        cluster.delete_namespace(namespace)


def _state(client: Client, task_id: str) -> str:
    state: str = client.get(task_id)["state"]
    return state


def _local(command: str, port: str, data_dir: Path) -> str:
    """The page's port and data dir, made this test's own (the machine is shared)."""
    return command.replace(DOC_PORT, port).replace(DOC_DATA_DIR, str(data_dir / "dev"))


def _bash(command: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
