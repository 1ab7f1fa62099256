"""PII detection stays offline: presidio's email recognizer validates domains through tldextract, whose default
extractor fetches the public-suffix list on first use. ``policies.pii.detection`` gives it the snapshot bundled in
the tldextract wheel instead. Proven in a fresh interpreter (no warm cache, empty home and cache directories) where
every attempt to resolve a name or open a connection is recorded and refused: detection still finds the emails,
and nothing tried the network. A control runs tldextract's default extractor under the same harness, which must
see its fetch, so the harness itself is shown to catch one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.policies.pii_dataset import ENTITIES

ROOT = Path(__file__).resolve().parents[2]

HARNESS = """
import json, socket, sys

attempts = []

def refuse(name):
    def refused(*args, **kwargs):
        attempts.append([name, repr(args[:2])])
        raise OSError(f"network refused in this test: {name}{args[:2]!r}")
    return refused

socket.getaddrinfo = refuse("getaddrinfo")
socket.create_connection = refuse("create_connection")
socket.socket.connect = refuse("connect")
socket.socket.connect_ex = refuse("connect_ex")
"""

SCRIPT = (
    HARNESS
    + """
from policies.pii.detection import detector

text = sys.argv[2]
findings = detector(frozenset(json.loads(sys.argv[1]))).find(text)
print(json.dumps({
    "found": [[f.entity, text[f.start:f.end]] for f in findings],
    "attempts": attempts,
}))
"""
)

#: The control: tldextract's default extractor under the same harness, which must record its fetch.
CONTROL = (
    HARNESS
    + """
import tldextract
try:
    tldextract.TLDExtract(cache_dir=None)("claims.example.co.uk")
except Exception:
    pass
print(json.dumps({"attempts": attempts}))
"""
)

TEXT = (
    "Write to jane.doe@example.co.uk or claims@insurer.museum, see https://portal.example.com/claims, "
    "and copy ops@sub.example.org."
)


def offline(tmp_path: Path, script: str, *args: str) -> dict[str, Any]:
    """What ``script`` printed last, run in a fresh interpreter with empty home and cache directories."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "TLDEXTRACT_CACHE": str(home / "tldextract"),
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def test_the_harness_sees_a_fetch(tmp_path: Path) -> None:
    """The control: tldextract's default extractor fetches the public-suffix list, and the harness records it."""
    assert offline(tmp_path, CONTROL)["attempts"], "the harness missed tldextract's fetch"


def test_email_detection_makes_no_network_call(tmp_path: Path) -> None:
    answer = offline(tmp_path, SCRIPT, json.dumps(list(ENTITIES)), TEXT)
    assert answer["attempts"] == [], answer
    emails = {text for entity, text in answer["found"] if entity == "EMAIL_ADDRESS"}
    assert emails == {"jane.doe@example.co.uk", "claims@insurer.museum", "ops@sub.example.org"}, answer
