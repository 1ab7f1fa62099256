"""The claims-triage document-extraction model: synthetic data, a small classifier and field extraction.

Everything here is plain Python and numpy, so the BentoML service in ``../service.py`` starts in seconds and
the model trains deterministically at build time (``python -m claims_model.train``) or on first start.
"""

from __future__ import annotations

MODEL_VERSION = "1.0.0"
"""Version of the model: the training data, features and weights format. Weights live under a folder per version."""

CLAIM_TYPES: tuple[str, ...] = ("auto", "property", "health", "travel")
"""The classes the classifier predicts, in the order of the weight matrix rows."""
