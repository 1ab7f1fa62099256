"""The docs site builds with ``mkdocs build --strict``: no broken link or anchor, no page left out of the nav."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def _nav_pages(nav: list[object]) -> set[str]:
    pages: set[str] = set()
    for item in nav:
        values = item.values() if isinstance(item, dict) else [item]
        for value in values:
            pages |= _nav_pages(value) if isinstance(value, list) else {str(value)}
    return pages


def test_every_page_is_in_the_nav() -> None:
    # mkdocs.yml's python tags are none; a plain YAML load sees the nav as written.
    nav = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())["nav"]
    pages = {str(path.relative_to(REPO_ROOT / "docs")) for path in (REPO_ROOT / "docs").rglob("*.md")}
    assert pages == _nav_pages(nav)


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO_ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "site" / "runbooks" / "index.html").exists()


def test_http_api_reference_is_current() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aiplane.apidocs", "--check"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
