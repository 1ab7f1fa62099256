"""The aiplane command: crds, validate, dev, and the settings and log format every process shares."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aiplane import cli, logs
from aiplane.settings import Settings
from tests.crds.cases import BAD_CASES, EXAMPLES


def test_crds_prints_every_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crds"]) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [doc["metadata"]["name"] for doc in documents] == [
        "models.aiplane.io",
        "workflows.aiplane.io",
        "connectors.aiplane.io",
        "policies.aiplane.io",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    ]


def test_validate_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", str(EXAMPLES)]) == 0
    assert "valid: Workflow/claims-triage" in capsys.readouterr().out


def test_validate_names_the_file_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = next(c for c in BAD_CASES if c.id == "canary-weight-150")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(case.manifest()))
    assert cli.main(["validate", str(bad)]) == 1
    error = capsys.readouterr().err
    assert str(bad) in error
    assert case.field in error


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("kind: [", "cannot read YAML"),
        ("- just a list", "a manifest must be a mapping"),
        ("apiVersion: aiplane.io/v1alpha1\nkind: Pipeline\nmetadata: {name: x}\n", "unknown kind 'Pipeline'"),
    ],
)
def test_validate_explains_unusable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, problem: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    assert cli.main(["validate", str(bad)]) == 1
    assert problem in capsys.readouterr().err


def test_validate_skips_other_api_groups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "configmap.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert cli.main(["validate", str(other)]) == 0
    assert capsys.readouterr().out == ""


def test_dev_refuses_bad_manifests_before_starting_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = next(c for c in BAD_CASES if c.id == "next-names-missing-step")
    (tmp_path / "workflow.yaml").write_text(yaml.safe_dump(case.manifest()))
    assert cli.main(["dev", "--examples", str(tmp_path), "--data-dir", str(tmp_path / "data")]) == 1
    assert "next must name a step of this workflow" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_client_commands_need_an_api_key(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("AIPLANE_API_KEY", raising=False)
    assert cli.main(["get", "01ABC"]) == 1
    assert "AIPLANE_API_KEY" in capsys.readouterr().err


def test_settings_come_from_the_environment() -> None:
    settings = Settings.from_env({"AIPLANE_PORT": "9000", "AIPLANE_DATA_DIR": "/tmp/x", "OTHER": "1"})
    assert settings.port == 9000
    assert settings.data_dir == Path("/tmp/x")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="port"):
        Settings.from_env({"AIPLANE_PORT": "70000"})


def test_logs_are_one_json_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure("INFO", "json")
        logging.getLogger("aiplane.test").info("step done", extra={"task_id": "t1", "attempt": 2})
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["message"] == "step done"
    assert entry["task_id"] == "t1"
    assert entry["attempt"] == 2
    assert entry["level"] == "info"


def test_client_commands_start_without_the_engine() -> None:
    """`aiplane submit`, `get`, ... talk HTTP: importing the engine and the Kafka client for them cost seconds a
    command (only kafka-source, and the commands that open a store, import them, when they run)."""
    code = (
        "import sys, aiplane.cli as c; c.build_parser(kafka_source=False); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'engine', 'connectors', 'kafka'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert proc.stdout.strip() == "[]"
