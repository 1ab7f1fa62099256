"""``aiplane gateway``/``worker``: which namespace they follow, and a clear refusal when no cluster can be read."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiplane import cli
from aiplane.components import cluster_namespace
from aiplane.incluster import WorkflowTargets
from policies.effective import Target


def test_the_namespace_comes_from_the_flag_then_the_environment() -> None:
    env = {"AIPLANE_NAMESPACE": "claims", "AIPLANE_MODELS_NAMESPACE": "old"}
    assert cluster_namespace("flag", env) == "flag"
    assert cluster_namespace(None, env) == "claims"
    assert cluster_namespace(None, {"AIPLANE_MODELS_NAMESPACE": "old"}) == "old"  # the former name still works
    assert cluster_namespace(None, {}) is None


def test_the_former_flag_name_is_the_same_option() -> None:
    args = cli.build_parser().parse_args(["worker", "--models-from-cluster", "claims"])
    assert args.from_cluster == "claims"


def test_workflow_targets_follow_the_labels_the_watch_saw() -> None:
    labels: dict[str, dict[str, str]] = {"claims-triage": {"app": "claims"}}
    targets = WorkflowTargets("claims", labels)
    assert targets.get("claims-triage") == Target("Workflow", "claims-triage", "claims", {"app": "claims"})
    assert targets.get("unknown") is None
    labels["late"] = {}  # what the watch adds later is seen at once
    assert targets["late"] == Target("Workflow", "late", "claims", {})
    assert sorted(targets) == ["claims-triage", "late"]


@pytest.mark.parametrize("command", ["gateway", "worker"])
def test_no_cluster_to_read_is_a_configuration_error(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code = cli.main([command, "--db", f"sqlite:///{tmp_path / 'engine.db'}", "--from-cluster", "claims"])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"aiplane {command}: ")
