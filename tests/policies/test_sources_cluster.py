"""Policies from a real apiserver: a change to a Policy reaches the effective policy of new calls within seconds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import kubernetes
import pytest

from policies.effective import Target
from policies.sources_kube import GROUP, PLURAL, VERSION, KubePolicyWatch
from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually
from tests.operators.conftest import crds_installed

__all__ = ["crds_installed"]


def manifest(name: str, regions: list[str], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"selector": {"kinds": ["Workflow"], "matchLabels": labels}, "residency": {"regions": regions}},
    }


@pytest.fixture
def api(crds_installed: Cluster) -> Iterator[kubernetes.client.CustomObjectsApi]:
    client = crds_installed.api_client()
    yield kubernetes.client.CustomObjectsApi(client)
    close: Callable[[], None] = client.close  # untyped upstream
    close()


def test_a_policy_change_applies_within_seconds(
    crds_installed: Cluster, api: kubernetes.client.CustomObjectsApi, k8s_namespace: str
) -> None:
    target = Target("Workflow", "claims", k8s_namespace, {"team": "claims"})
    create = api.create_namespaced_custom_object
    create(GROUP, VERSION, k8s_namespace, PLURAL, manifest("eu", ["eu-west", "eu-central"], {"team": "claims"}))
    watch = KubePolicyWatch(crds_installed.api_client(), namespace=k8s_namespace).start()
    try:
        policies = watch.policies
        assert policies.effective(target).regions == frozenset({"eu-west", "eu-central"})
        [source] = policies.effective(target).sources
        assert (source.namespace, source.name, source.generation) == (k8s_namespace, "eu", 1)

        # A second policy: the intersection applies to the next call.
        create(GROUP, VERSION, k8s_namespace, PLURAL, manifest("strict", ["eu-west"], {"team": "claims"}))

        def narrowed() -> None:
            assert policies.effective(target).regions == frozenset({"eu-west"})

        assert_eventually(narrowed, timeout=10, interval=0.05)

        # An edit of a policy, then its deletion.
        api.patch_namespaced_custom_object(
            GROUP, VERSION, k8s_namespace, PLURAL, "strict", {"spec": {"residency": {"regions": ["eu-central"]}}}
        )

        def edited() -> None:
            result = policies.effective(target)
            assert result.regions == frozenset({"eu-central"})
            assert {s.name: s.generation for s in result.sources} == {"eu": 1, "strict": 2}

        assert_eventually(edited, timeout=10, interval=0.05)
        api.delete_namespaced_custom_object(GROUP, VERSION, k8s_namespace, PLURAL, "strict")

        def removed() -> None:
            assert [s.name for s in policies.effective(target).sources] == ["eu"]

        assert_eventually(removed, timeout=10, interval=0.05)

        # A policy that selects other labels does not govern the target.
        create(GROUP, VERSION, k8s_namespace, PLURAL, manifest("fraud", ["us"], {"team": "fraud"}))

        def seen() -> None:
            assert len(policies.policies()) == 2

        assert_eventually(seen, timeout=10, interval=0.05)
        assert policies.effective(target).regions == frozenset({"eu-west", "eu-central"})
    finally:
        watch.stop()
