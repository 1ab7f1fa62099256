"""``aiplane dataflow``: the auditors' report of which workflows send which data where, from manifests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aiplane import cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "claims-triage"

US_MODEL = """
apiVersion: aiplane.io/v1alpha1
kind: Model
metadata:
  name: fraud-scorer
spec:
  bento: fraud:Scorer
  version: 1.0.0
  region: us-east
---
apiVersion: aiplane.io/v1alpha1
kind: Workflow
metadata:
  name: fraud-check
  labels:
    app.kubernetes.io/part-of: claims-triage
    aiplane.io/data-class: claims
spec:
  steps:
    - name: score
      type: model
      model: {name: fraud-scorer}
---
apiVersion: aiplane.io/v1alpha1
kind: Workflow
metadata:
  name: public-faq
spec:
  steps:
    - name: answer
      type: model
      model: {name: fraud-scorer}
"""


def test_the_example_keeps_its_data_in_its_region(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dataflow", str(EXAMPLES)]) == 0
    out = capsys.readouterr().out
    assert "workflow default/claims-triage" in out
    assert "residency:    eu-west" in out
    assert "pii:EMAIL_ADDRESS" in out
    assert "from          kafka topic claims-in" in out
    assert "ok     step extract -> model claims-extractor [region eu-west]" in out
    # An agent step sends the task's data to its planner and to what its actions call.
    assert "workflow default/claims-completion" in out
    assert "ok     step complete (planner) -> model claims-planner [region eu-west]" in out
    assert "ok     step complete action request-document -> http portal.claims.example.com [region eu-west]" in out
    assert "DENIED" not in out


def test_a_flow_out_of_region_is_reported_and_fails_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "claims", ignore=shutil.ignore_patterns("model"))
    (tmp_path / "fraud.yaml").write_text(US_MODEL)
    assert cli.main(["dataflow", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "DENIED step score -> model fraud-scorer [region us-east]" in out
    assert "'fraud-check' keeps its data in eu-west; model 'fraud-scorer' is in 'us-east'" in out
    # A workflow no residency policy selects may send its data anywhere.
    assert "workflow default/public-faq" in out
    assert "any region (no residency policy)" in out

    assert cli.main(["dataflow", "--json", str(tmp_path)]) == 1
    report = {wf["workflow"]: wf for wf in json.loads(capsys.readouterr().out)}
    fraud = report["fraud-check"]
    assert fraud["pinned_regions"] == ["eu-west"]
    assert fraud["flows"][0]["allowed"] is False
    assert fraud["flows"][0]["region"] == "us-east"
    assert report["public-faq"]["flows"][0]["allowed"] is True


def test_without_manifests_it_says_what_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dataflow"]) == 2
    assert "--cluster" in capsys.readouterr().err
