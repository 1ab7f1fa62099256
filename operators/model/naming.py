"""Names and labels of the objects a Model owns.

Object names must be DNS-1123 labels (Services are the strictest: 63 characters, lower case, no dots), while
Model versions may hold upper case, dots and underscores; the version itself goes in a label value, which allows
all of those.
"""

from __future__ import annotations

import hashlib
import re

GROUP = "aiplane.io"
VERSION = "v1alpha1"
PLURAL = "models"
FIELD_MANAGER = "aiplane-operator"

LABEL_MODEL = "aiplane.io/model"
LABEL_VERSION = "aiplane.io/version"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = FIELD_MANAGER
COMPONENT = "model-server"
# Selects every child of every Model, for the operator's own watches.
CHILD_SELECTOR = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: COMPONENT}

_MAX_NAME = 63
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def version_slug(version: str) -> str:
    """A version as it may appear in an object name: ``1-4-0`` as is, ``1.4.0`` -> ``1-4-0-<hash>``.

    A version that had to be changed gets a hash of the original, so ``1.4.0`` and ``1-4-0`` never share a name.
    """
    slug = _NOT_DNS.sub("-", version.lower()).strip("-") or "v"
    return slug if slug == version else f"{slug}-{_short_hash(version)}"


def child_name(model: str, version: str) -> str:
    """Deployment, Service and PodDisruptionBudget name of one live version of a model."""
    name = f"{model}-{version_slug(version)}"
    if len(name) <= _MAX_NAME:
        return name
    # Truncated names could collide, so the cut-off part is replaced by a hash of the whole.
    return f"{name[: _MAX_NAME - 9].rstrip('-')}-{_short_hash(name)}"


def selector_labels(model: str, version: str) -> dict[str, str]:
    """What a version's Deployment selects its pods by; immutable once the Deployment exists."""
    return {LABEL_MODEL: model, LABEL_VERSION: version}


def labels(model: str, version: str) -> dict[str, str]:
    return {
        **selector_labels(model, version),
        **CHILD_SELECTOR,
        "app.kubernetes.io/name": model,
        "app.kubernetes.io/version": version,
    }
