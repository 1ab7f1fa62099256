"""Train the claims model on synthetic data, report held-out metrics, save the weights.

Build time::

    cd examples/claims-triage/model && python -m claims_model.train            # to $AIPLANE_CLAIMS_MODEL_DIR
    python -m claims_model.train --out /tmp/claims-model --n-train 4000 --seed 7

Weights go to ``--out``, else ``$AIPLANE_CLAIMS_MODEL_DIR``, else ``~/.cache/aiplane/claims-model/<version>/``.
The same arguments always give the same weights and the same metrics. ``make setup`` (``hack/setup.sh``) and the
image build (``Containerfile``) run it with ``--if-stale``, so the service finds the weights there: it calls
``load_or_train``, which loads them when they are of this training key, and trains them (a few seconds, logged as a
warning) when they are not. The training key (``training_key``) hashes the code that decides the weights and their
metrics and the training arguments, so only a change to those retrains, never a restart or a fault switch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claims_model import CLAIM_TYPES, MODEL_VERSION
from claims_model.classifier import NaiveBayes
from claims_model.extraction import extract_fields
from claims_model.synthetic import ClaimRecord, generate

MODEL_DIR_ENV = "AIPLANE_CLAIMS_MODEL_DIR"
#: The modules whose code decides the weights or their recorded metrics (not the service, not the fault switches).
TRAINING_SOURCES = ("__init__.py", "classifier.py", "extraction.py", "synthetic.py", "train.py")
#: Under ``bentoml.``, so ``bentoml serve`` shows it with the service's own log lines.
logger = logging.getLogger("bentoml.aiplane.claims.train")
DEFAULT_SEED = 7
DEFAULT_N_TRAIN = 4000
DEFAULT_N_TEST = 1000
CALIBRATION_SHARE = 0.2


def default_model_dir() -> Path:
    """``$AIPLANE_CLAIMS_MODEL_DIR`` when set, else ``~/.cache/aiplane/claims-model/<version>/``."""
    configured = os.environ.get(MODEL_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "aiplane" / "claims-model" / MODEL_VERSION


def training_key(
    n_train: int = DEFAULT_N_TRAIN,
    n_test: int = DEFAULT_N_TEST,
    seed: int = DEFAULT_SEED,
    sources: Path | None = None,
) -> str:
    """What the weights are a function of: the training code (``TRAINING_SOURCES`` in ``sources``, default this
    package) and the arguments. Saved weights of another key are retrained."""
    folder = sources or Path(__file__).resolve().parent
    digest = hashlib.sha256(f"{n_train}/{n_test}/{seed}".encode())
    for name in TRAINING_SOURCES:
        digest.update(b"\0" + name.encode() + b"\0" + (folder / name).read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Metrics:
    """Held-out quality of the classifier and of the field extraction (shares between 0 and 1)."""

    n_test: int
    claim_type_accuracy: float
    mean_confidence: float
    log_loss: float
    amount_exact_match: float
    currency_exact_match: float
    incident_date_exact_match: float
    policy_number_exact_match: float
    confusion: dict[str, dict[str, int]]
    """confusion[true][predicted] = count."""


def evaluate(model: NaiveBayes, records: Sequence[ClaimRecord]) -> Metrics:
    """Score ``model`` and the field extraction against the labels of ``records``."""
    import math

    n = len(records)
    right = amount = currency = date = policy = 0
    confidence = loss = 0.0
    confusion = {truth: dict.fromkeys(CLAIM_TYPES, 0) for truth in CLAIM_TYPES}
    for record in records:
        prediction = model.predict(record.text)
        right += prediction.claim_type == record.claim_type
        confidence += prediction.confidence
        loss -= math.log(max(prediction.probabilities[record.claim_type], 1e-12))
        confusion[record.claim_type][prediction.claim_type] += 1
        fields = extract_fields(record.text)
        amount += fields.amount == record.amount
        currency += fields.currency == record.currency
        date += fields.incident_date == record.incident_date
        policy += fields.policy_number == record.policy_number
    return Metrics(
        n_test=n,
        claim_type_accuracy=right / n,
        mean_confidence=confidence / n,
        log_loss=loss / n,
        amount_exact_match=amount / n,
        currency_exact_match=currency / n,
        incident_date_exact_match=date / n,
        policy_number_exact_match=policy / n,
        confusion=confusion,
    )


def train(
    n_train: int = DEFAULT_N_TRAIN, n_test: int = DEFAULT_N_TEST, seed: int = DEFAULT_SEED
) -> tuple[NaiveBayes, Metrics]:
    """Fit on ``n_train`` synthetic documents, calibrate the temperature on a held-back fifth of them, refit on
    all of them, and measure on ``n_test`` documents drawn with another seed."""
    records = generate(n_train, seed)
    held_out = generate(n_test, seed + 1_000_003)
    cut = int(n_train * (1 - CALIBRATION_SHARE))
    fit, calibration = records[:cut], records[cut:]
    first = NaiveBayes.fit([r.text for r in fit], [r.claim_type for r in fit])
    temperature = first.with_temperature([r.text for r in calibration], [r.claim_type for r in calibration]).temperature
    full = NaiveBayes.fit([r.text for r in records], [r.claim_type for r in records])
    model = NaiveBayes(full.log_prior, full.log_likelihood, temperature)
    return model, evaluate(model, held_out)


def train_and_save(
    directory: Path, n_train: int = DEFAULT_N_TRAIN, n_test: int = DEFAULT_N_TEST, seed: int = DEFAULT_SEED
) -> tuple[NaiveBayes, dict[str, Any]]:
    """Train, then save the weights and a ``meta.json`` holding the training arguments and the metrics."""
    started = time.perf_counter()
    model, metrics = train(n_train, n_test, seed)
    meta: dict[str, Any] = {
        "seed": seed,
        "n_train": n_train,
        "training_key": training_key(n_train, n_test, seed),
        "metrics": metrics.__dict__,
        "train_seconds": round(time.perf_counter() - started, 3),
    }
    return model, model.save(directory, meta)


def load_current(
    directory: Path, n_train: int = DEFAULT_N_TRAIN, n_test: int = DEFAULT_N_TEST, seed: int = DEFAULT_SEED
) -> tuple[NaiveBayes, dict[str, Any]]:
    """The saved model in ``directory`` if it was trained with this code and these arguments; ``ValueError``
    saying why not (none there, another version, another training key)."""
    model, meta = NaiveBayes.load(directory)
    key = training_key(n_train, n_test, seed)
    if meta.get("training_key") != key:
        raise ValueError(f"weights in {directory} are of training key {meta.get('training_key')}, not {key}")
    return model, meta


def load_or_train(
    directory: Path | None = None,
    n_train: int = DEFAULT_N_TRAIN,
    n_test: int = DEFAULT_N_TEST,
    seed: int = DEFAULT_SEED,
) -> tuple[NaiveBayes, dict[str, Any], bool]:
    """The saved model in ``directory`` (default ``default_model_dir()``), trained (with the other arguments) and
    saved first when it is not there or not current (``load_current``). Returns (model, meta, whether it was
    trained now)."""
    directory = directory or default_model_dir()
    try:
        model, meta = load_current(directory, n_train, n_test, seed)
    except ValueError as why:
        logger.warning(
            "training the claims model at start-up (%s); make setup or the image build trains it ahead: "
            "python -m claims_model.train --if-stale",
            why,
        )
        model, meta = train_and_save(directory, n_train, n_test, seed)
        return model, meta, True
    return model, meta, False


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the claims model on synthetic data and save its weights.")
    parser.add_argument("--out", type=Path, default=None, help=f"weights folder (default: ${MODEL_DIR_ENV} or cache)")
    parser.add_argument("--n-train", type=int, default=DEFAULT_N_TRAIN)
    parser.add_argument("--n-test", type=int, default=DEFAULT_N_TEST)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--if-stale", action="store_true", help="train only when the folder holds no weights of this training key"
    )
    args = parser.parse_args(argv)
    directory: Path = args.out or default_model_dir()
    if args.if_stale:
        try:
            _, meta = load_current(directory, args.n_train, args.n_test, args.seed)
        except ValueError:
            pass
        else:
            print(f"claims model {MODEL_VERSION}: up to date in {directory} (training key {meta['training_key']})")
            return
    _, meta = train_and_save(directory, args.n_train, args.n_test, args.seed)
    metrics = meta["metrics"]
    print(f"claims model {MODEL_VERSION}: trained on {args.n_train} documents in {meta['train_seconds']} s")
    print(f"weights: {directory} (training key {meta['training_key']})")
    print(f"held-out documents:         {metrics['n_test']}")
    for key in (
        "claim_type_accuracy",
        "mean_confidence",
        "log_loss",
        "amount_exact_match",
        "currency_exact_match",
        "incident_date_exact_match",
        "policy_number_exact_match",
    ):
        print(f"{key + ':':<28}{metrics[key]:.4f}")
    print("confusion (true -> predicted):", json.dumps(metrics["confusion"]))


if __name__ == "__main__":
    main()
