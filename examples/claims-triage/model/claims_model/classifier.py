"""Claim-type classifier: multinomial naive Bayes over hashed words and character trigrams, in numpy.

Features: every distinct word of the document (lower-cased letters) hashes to one bucket, and each of its
character trigrams (``<wo``, ``wor``, ``ord``, ``rd>``) to another, so a typo changes a few trigrams and not the
whole word. Hashing uses CRC-32 (stable across processes, unlike ``hash()``), modulo ``N_FEATURES``.

Probabilities: naive Bayes log-scores are far too sure of themselves, so they are divided by a temperature fitted
on a held-out calibration split (the one that minimises log loss); ``confidence`` is the calibrated probability
of the predicted class.

Explanation: the score is a sum over features, so each word's share is exact: the sum over its features of
``log P(feature | predicted) - log P(feature | runner-up)``, divided by the temperature. Positive words pushed
the document towards the predicted class, negative words towards the runner-up.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from claims_model import CLAIM_TYPES, MODEL_VERSION

N_FEATURES = 2**16
WEIGHTS_FILE = "weights.npz"
META_FILE = "meta.json"
FORMAT = "aiplane-claims-nb/1"

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased, letters only (numbers are left to the field extraction)."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=100_000)
def word_features(word: str) -> tuple[int, ...]:
    """Hashed feature ids of one word: the word itself and its character trigrams."""
    padded = f"<{word}>"
    names = [f"w:{word}", *(f"c:{padded[i : i + 3]}" for i in range(len(padded) - 2))]
    return tuple(zlib.crc32(name.encode()) % N_FEATURES for name in names)


def featurize(text: str) -> tuple[list[str], IntArray]:
    """The distinct words of ``text`` (first-seen order) and the feature ids of all of them, concatenated."""
    distinct = list(dict.fromkeys(words(text)))
    ids = [f for word in distinct for f in word_features(word)]
    return distinct, np.asarray(ids, dtype=np.int64)


@dataclass(frozen=True)
class Prediction:
    """A claim type with calibrated probabilities and the words that decided it."""

    claim_type: str
    confidence: float
    probabilities: dict[str, float]
    runner_up: str
    contributions: list[tuple[str, float]]
    """(word, weight) for every distinct word, strongest push towards ``claim_type`` first."""


@dataclass(frozen=True)
class NaiveBayes:
    """Trained parameters: per-class log prior, per-class log likelihood of each feature, and the temperature."""

    log_prior: FloatArray  # (classes,)
    log_likelihood: FloatArray  # (classes, N_FEATURES)
    temperature: float
    classes: tuple[str, ...] = CLAIM_TYPES

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[str], alpha: float = 0.1) -> NaiveBayes:
        """Count features per class and smooth with ``alpha`` (Lidstone); temperature 1 until calibrated."""
        n_classes = len(CLAIM_TYPES)
        counts = np.zeros((n_classes, N_FEATURES), dtype=np.float64)
        docs = np.zeros(n_classes, dtype=np.float64)
        index = {name: i for i, name in enumerate(CLAIM_TYPES)}
        per_class: list[list[IntArray]] = [[] for _ in CLAIM_TYPES]
        for text, label in zip(texts, labels, strict=True):
            per_class[index[label]].append(featurize(text)[1])
            docs[index[label]] += 1
        for c, arrays in enumerate(per_class):
            if arrays:
                counts[c] = np.bincount(np.concatenate(arrays), minlength=N_FEATURES)
        smoothed = counts + alpha
        log_likelihood = np.log(smoothed) - np.log(smoothed.sum(axis=1, keepdims=True))
        # Stored as float32: keep exactly that precision in memory too, so a trained and a loaded model agree.
        log_likelihood = log_likelihood.astype(np.float32).astype(np.float64)
        log_prior = np.log((docs + 1.0) / (docs.sum() + n_classes))
        return cls(log_prior=log_prior, log_likelihood=log_likelihood, temperature=1.0)

    def raw_scores(self, ids: IntArray) -> FloatArray:
        """Unnormalised log-posterior per class (before the temperature)."""
        result: FloatArray = self.log_prior + self.log_likelihood[:, ids].sum(axis=1)
        return result

    def with_temperature(self, texts: Sequence[str], labels: Sequence[str]) -> NaiveBayes:
        """A copy whose temperature minimises the log loss on ``texts`` (grid search, deterministic)."""
        scores = np.stack([self.raw_scores(featurize(t)[1]) for t in texts])
        truth = np.asarray([self.classes.index(label) for label in labels])
        best_t, best_loss = 1.0, float("inf")
        for t in np.geomspace(1.0, 1000.0, 241):
            logp = _log_softmax(scores / t)
            loss = float(-logp[np.arange(len(truth)), truth].mean())
            if loss < best_loss - 1e-12:
                best_t, best_loss = float(t), loss
        return NaiveBayes(self.log_prior, self.log_likelihood, best_t, self.classes)

    def predict(self, text: str) -> Prediction:
        distinct, ids = featurize(text)
        probs = np.exp(_log_softmax(self.raw_scores(ids) / self.temperature))
        order = np.argsort(-probs, kind="stable")
        best, second = int(order[0]), int(order[1])
        delta = (self.log_likelihood[best] - self.log_likelihood[second]) / self.temperature
        contributions = [(word, float(delta[list(word_features(word))].sum())) for word in distinct]
        contributions.sort(key=lambda item: -item[1])
        return Prediction(
            claim_type=self.classes[best],
            confidence=float(probs[best]),
            probabilities={name: float(p) for name, p in zip(self.classes, probs, strict=True)},
            runner_up=self.classes[second],
            contributions=contributions,
        )

    # --- persistence -------------------------------------------------------------------------------------------

    def save(self, directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
        """Write ``weights.npz`` then ``meta.json`` atomically (rename), so a reader never sees half a model.
        Returns the metadata as written: ``meta`` plus format, version, classes, feature count and temperature."""
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(
            directory / WEIGHTS_FILE,
            lambda f: np.savez_compressed(
                f, log_prior=self.log_prior, log_likelihood=self.log_likelihood.astype(np.float32)
            ),
        )
        full_meta = {
            **meta,
            "format": FORMAT,
            "version": MODEL_VERSION,
            "classes": list(self.classes),
            "n_features": N_FEATURES,
            "temperature": self.temperature,
        }
        payload = json.dumps(full_meta, indent=2, sort_keys=True).encode()
        _atomic_write(directory / META_FILE, lambda f: f.write(payload))
        return full_meta

    @classmethod
    def load(cls, directory: Path) -> tuple[NaiveBayes, dict[str, Any]]:
        """Read a saved model; ``ValueError`` when it is missing, of another version, or unreadable."""
        try:
            meta: dict[str, Any] = json.loads((directory / META_FILE).read_text())
            if (meta.get("format"), meta.get("version"), meta.get("n_features"), tuple(meta.get("classes", ()))) != (
                FORMAT,
                MODEL_VERSION,
                N_FEATURES,
                CLAIM_TYPES,
            ):
                raise ValueError(f"model in {directory} is of another version or format")
            with np.load(directory / WEIGHTS_FILE) as data:
                log_prior = np.asarray(data["log_prior"], dtype=np.float64)
                log_likelihood = np.asarray(data["log_likelihood"], dtype=np.float64)
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"no readable model in {directory}: {exc}") from exc
        if log_likelihood.shape != (len(CLAIM_TYPES), N_FEATURES) or log_prior.shape != (len(CLAIM_TYPES),):
            raise ValueError(f"model in {directory} has the wrong shape")
        return cls(log_prior, log_likelihood, float(meta["temperature"])), meta


def _log_softmax(scores: FloatArray) -> FloatArray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    result: FloatArray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
