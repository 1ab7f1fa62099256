"""The README's run command: `aiplane demo` drives a real `aiplane dev` (gateway, workers, SQLite, `bentoml serve`)
through the claims-triage case and the claims-completion agent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_demo_runs_the_claims_case_end_to_end() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aiplane.cli", "demo"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
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
