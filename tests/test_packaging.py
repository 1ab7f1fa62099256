"""The wheel carries every package under the names pytest and mypy use, the CRD YAML, and the console script."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aiplane", "crds", "engine", "api", "operators", "connectors", "policies", "planners")


def test_wheel_contents(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("aiplane-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names
        assert f"{package}/py.typed" in names
    assert "crds/workflows.aiplane.io.yaml" in names
    assert not any(name.startswith(("tests/", "benchmarks/", "hack/")) for name in names)
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "aiplane = aiplane.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
