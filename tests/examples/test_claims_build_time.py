"""The claims model is trained at set-up and image build, not at the service's first start.

``hack/train-claims-model.sh`` (what ``make setup`` runs) trains it into the folder the service loads from, and does
nothing the next time unless the training code or arguments changed (the training key); ``bentoml serve`` then
reports ``trained_at_startup: false``. Weights of another key are retrained at start-up, with a warning saying so.
The Containerfile trains it into the folder its image points the service at.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from claims_model import MODEL_VERSION
from claims_model.classifier import META_FILE
from claims_model.train import MODEL_DIR_ENV, TRAINING_SOURCES, load_current, load_or_train, training_key

from tests.examples.conftest import CLAIMS_MODEL_DIR
from tests.examples.test_claims_model import serve_claims_model

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "hack" / "train-claims-model.sh"


def _set_up(model_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, MODEL_DIR_ENV: str(model_dir)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def set_up(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder as ``make setup`` leaves it."""
    model_dir = tmp_path_factory.mktemp("set-up") / "claims-model"
    proc = _set_up(model_dir)
    assert proc.returncode == 0, proc.stderr
    assert f"claims model {MODEL_VERSION}: trained on" in proc.stdout
    assert f"(training key {training_key()})" in proc.stdout
    return model_dir


def test_training_key_follows_the_training_code_and_arguments(tmp_path: Path) -> None:
    assert training_key() == training_key()
    assert training_key(seed=8) != training_key()
    copy = tmp_path / "claims_model"
    shutil.copytree(CLAIMS_MODEL_DIR / "claims_model", copy)
    assert training_key(sources=copy) == training_key()
    # The service's fault switches do not decide the weights: no retrain when they change.
    assert "faults.py" not in TRAINING_SOURCES
    (copy / "faults.py").write_text("# changed\n")
    assert training_key(sources=copy) == training_key()
    # The synthetic data does.
    (copy / "synthetic.py").write_text((copy / "synthetic.py").read_text() + "\n# changed\n")
    assert training_key(sources=copy) != training_key()


def test_set_up_again_leaves_current_weights_alone(set_up: Path) -> None:
    meta = set_up / META_FILE
    before = meta.stat().st_mtime_ns
    proc = _set_up(set_up)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"claims model {MODEL_VERSION}: up to date in {set_up}"), proc.stdout
    assert meta.stat().st_mtime_ns == before
    assert json.loads(meta.read_text())["training_key"] == training_key()


@pytest.mark.integration
def test_after_set_up_the_service_loads_the_weights(set_up: Path, tmp_path: Path) -> None:
    with serve_claims_model(set_up, tmp_path) as base:
        info = httpx.post(f"{base}/info", json={}, timeout=30).json()
    assert info["trained_at_startup"] is False, info
    assert info["model_dir"] == str(set_up)
    assert info["metrics"]["claim_type_accuracy"] > 0.9


def test_weights_of_another_training_key_are_retrained_with_a_warning(
    set_up: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stale = tmp_path / "stale"
    shutil.copytree(set_up, stale)
    meta = json.loads((stale / META_FILE).read_text())
    (stale / META_FILE).write_text(json.dumps({**meta, "training_key": "0123456789abcdef"}))
    with pytest.raises(ValueError, match="training key 0123456789abcdef"):
        load_current(stale)
    with caplog.at_level(logging.WARNING, logger="bentoml.aiplane.claims.train"):
        _, retrained, trained_now = load_or_train(stale)
    assert trained_now
    assert retrained["training_key"] == training_key()
    assert "training the claims model at start-up" in caplog.text
    assert "make setup" in caplog.text
    # Now current: the next start loads it.
    assert load_or_train(stale)[2] is False


def test_the_image_trains_it_where_its_service_loads_from() -> None:
    text = (REPO_ROOT / "Containerfile").read_text().replace("\\\n", " ")
    (out,) = re.findall(r"RUN .*-m claims_model\.train .*--out (\S+)", text)
    assert f"{MODEL_DIR_ENV}={out} " in text
    # The training code is copied and trained before the service, so a change to the service alone does not retrain.
    train_at = text.index("-m claims_model.train")
    assert text.index("COPY examples/claims-triage/model/claims_model ") < train_at
    assert text.index("COPY examples/claims-triage/model/service.py") > train_at
