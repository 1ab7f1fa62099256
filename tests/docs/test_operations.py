"""The operations page's try-out install runs as written: its marked console blocks, on the test cluster."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

from tests.fixtures.cluster import Cluster
from tests.helm.chart import helm_binary

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE = REPO_ROOT / "docs" / "operations.md"
MARKED_BLOCK = re.compile(r"<!-- tested[^>]*-->\s*```console\n(.*?)```", re.DOTALL)


def marked_commands() -> list[str]:
    """Lines of the blocks after a ``<!-- tested -->`` marker, in order; the NS/REL defaults are the test's to set."""
    blocks = MARKED_BLOCK.findall(PAGE.read_text())
    assert len(blocks) == 2, "the page's tested blocks went missing"
    lines = [line.strip() for block in blocks for line in block.splitlines() if line.strip()]
    return [line for line in lines if not line.startswith("export NS=")]


def test_try_out_install_as_documented(cluster: Cluster, tmp_path: Path) -> None:
    # Unique names (the cluster is shared); the release name keeps "aiplane" so object names read as documented.
    suffix = uuid.uuid4().hex[:6]
    namespace, release = f"ops-doc-{suffix}", f"aiplane-{suffix}"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "helm").symlink_to(helm_binary())
    env = {**cluster.env, "NS": namespace, "REL": release, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    install, uninstall = marked_commands()[:-2], marked_commands()[-2:]
    installed = False
    try:
        for command in install:
            proc = _run(command, env)
            assert proc.returncode == 0, f"{command}\n{proc.stderr}\n{proc.stdout}"
        pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.split()
        assert len(pods) == 4, pods  # tryout.yaml: one gateway, worker, operator, PostgreSQL
        installed = True
    finally:
        results = [(command, _run(command, env)) for command in uninstall]
    if installed:
        for command, proc in results:
            assert proc.returncode == 0, f"{command}\n{proc.stderr}"
        assert subprocess.run(
            [str(helm_binary()), "status", release, "-n", namespace], env=env, capture_output=True, check=False
        ).returncode


def _run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
