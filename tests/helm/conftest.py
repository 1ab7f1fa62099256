"""Fixtures of the chart's cluster tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.cluster import Cluster


@pytest.fixture
def restricted_namespace(cluster: Cluster) -> Iterator[str]:
    """A namespace that enforces Pod Security `restricted` (and warns and audits at it)."""
    name = cluster.create_namespace("helm-restricted")
    labels = [f"pod-security.kubernetes.io/{mode}=restricted" for mode in ("enforce", "warn", "audit")]
    cluster.kubectl("label", "namespace", name, *labels, "pod-security.kubernetes.io/enforce-version=latest")
    try:
        yield name
    finally:
        cluster.delete_namespace(name)
