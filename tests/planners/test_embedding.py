"""The numpy all-MiniLM-L6-v2 gives sentence-transformers' vectors: its published similarities, and the
properties of a mean-pooled, normalised sentence embedding."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits  # type: ignore[import-untyped]  # ships no type hints

from planners.embedding import BATCH_SIZE, SentenceEmbedder, one_blas_thread


def test_published_similarities(embedder: SentenceEmbedder) -> None:
    # sentence-transformers' quickstart for all-MiniLM-L6-v2 prints these cosine similarities (to 4 places):
    # tensor([[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411], [0.1046, 0.1411, 1.0000]])
    vectors = embedder.embed(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    assert vectors.shape == (3, 384)
    similarities = vectors @ vectors.T
    published = np.array([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])
    np.testing.assert_allclose(similarities, published, atol=1e-3)


@pytest.mark.parametrize(
    ("left", "right", "published"),
    [
        # Printed for all-MiniLM-L6-v2 by the semantic-similarity examples of sentence-transformers' users
        # (util.cos_sim, 4 places), e.g. DeepLearning.AI's "Open Source Models with Hugging Face" course.
        ("The new movie is awesome", "The new movie is so great", 0.8939),
        ("The cat sits outside", "The cat plays in the garden", 0.6788),
        ("I love pasta", "Do you like pizza?", 0.5096),
        ("A man is playing guitar", "The cat plays in the garden", 0.2105),
        ("The cat sits outside", "The dog plays in the garden", 0.2838),
        ("A man is playing guitar", "A woman watches TV", -0.0327),
        ("The movies are awesome", "The new movie is so great", 0.6571),
    ],
)
def test_published_pair_similarities(embedder: SentenceEmbedder, left: str, right: str, published: float) -> None:
    a, b = embedder.embed([left, right])
    assert float(a @ b) == pytest.approx(published, abs=1e-3)


def test_unit_norm_and_deterministic(embedder: SentenceEmbedder) -> None:
    texts = ["Request the police report from the claimant.", "", "a", "Ünïcödé and 数字 text — fine."]
    first = embedder.embed(texts)
    assert first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(embedder.embed(texts), first)


def test_a_batch_gives_each_text_its_own_vector(embedder: SentenceEmbedder) -> None:
    # Lengths differ, so the batch is padded: padding must not change a text's vector, nor the order of the rows.
    texts = [f"claim number {i} " + "with a long description of the damage " * (i % 5) for i in range(BATCH_SIZE + 3)]
    batch = embedder.embed(texts)
    single = np.stack([embedder.embed_one(text) for text in texts])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_paraphrases_score_above_unrelated_sentences(embedder: SentenceEmbedder) -> None:
    pairs = [
        ("Ask the customer to send the missing police report.", "Request the police report from the claimant."),
        ("The extracted amount is empty, run extraction again.", "Re-run the extraction model on the documents."),
        ("A cat sits on the mat.", "There is a cat sitting on a rug."),
    ]
    unrelated = "The stock market closed higher on Tuesday."
    for left, right in pairs:
        a, b, c = embedder.embed([left, right, unrelated])
        assert float(a @ b) > float(a @ c) + 0.2, (left, right)


def test_inputs_are_cut_at_256_word_pieces(embedder: SentenceEmbedder) -> None:
    head = "insurance claim " * 127  # 254 word pieces, plus [CLS] and [SEP]
    assert len(embedder.tokenizer.encode(head).ids) == 256
    np.testing.assert_allclose(
        embedder.embed_one(head + "and a very different tail"), embedder.embed_one(head), atol=1e-6
    )


def test_cached_vectors_are_the_embedded_ones(embedder: SentenceEmbedder) -> None:
    texts = ["first action description", "second action description", "first action description"]
    cached = embedder.embed_cached(texts)
    np.testing.assert_allclose(cached, embedder.embed(texts), atol=1e-6)
    np.testing.assert_array_equal(embedder.embed_cached(texts), cached)
    assert embedder.embed_cached([]).shape == (0, 384)


def test_the_cache_is_bounded() -> None:
    small = SentenceEmbedder(cache_size=2)
    small.embed_cached(["a", "b", "c"])
    assert list(small._cache) == ["b", "c"]


def test_empty_input(embedder: SentenceEmbedder) -> None:
    assert embedder.embed([]).shape == (0, 384)


@pytest.mark.parametrize("text", ["x" * 10_000, "word " * 5_000])
def test_long_texts_are_truncated_not_refused(embedder: SentenceEmbedder, text: str) -> None:
    assert embedder.embed_one(text).shape == (384,)


def test_one_blas_thread_unless_the_environment_says_otherwise() -> None:
    with threadpool_limits():  # restores the thread counts on exit
        assert not one_blas_thread({"OPENBLAS_NUM_THREADS": "4"})
        assert one_blas_thread({})
        assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")


def test_loads_and_embeds_without_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    offline = SentenceEmbedder()
    assert offline.embed_one("offline").shape == (384,)
