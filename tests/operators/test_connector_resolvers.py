"""In-cluster resolvers for the engine's workers, against the real apiserver: Connector specs from a watch, Secret
keys read through the API."""

from __future__ import annotations

from typing import Any

from aiplane.kubeconnectors import KubeConnectorResolver, KubeSecretResolver
from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually
from tests.operators.kube import apply


def http_connector(url: str) -> dict[str, Any]:
    return {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Connector",
        "metadata": {"name": "crm"},
        "spec": {
            "type": "http",
            "http": {"url": url, "headers": [{"name": "Authorization", "valueFrom": {"name": "crm", "key": "token"}}]},
        },
    }


def test_connectors_follow_the_cluster_and_secrets_resolve(crds_installed: Cluster, k8s_namespace: str) -> None:
    cluster = crds_installed
    apply(cluster, k8s_namespace, http_connector("https://crm.example.com/v1"))
    resolver = KubeConnectorResolver(cluster.api_client(), k8s_namespace).start()
    try:
        spec = resolver.connector("crm")
        assert spec is not None
        assert spec.http is not None
        assert spec.http.url == "https://crm.example.com/v1"
        assert resolver.connector("nope") is None

        apply(cluster, k8s_namespace, http_connector("https://crm.example.com/v2"))

        def updated() -> None:
            found = resolver.connector("crm")
            assert found is not None
            assert found.http is not None
            assert found.http.url.endswith("/v2")

        assert_eventually(updated, timeout=30)
        cluster.kubectl("delete", "connector", "crm", "-n", k8s_namespace)
        assert_eventually(lambda: resolver.connector("crm") is None, timeout=30)
    finally:
        resolver.stop()

    secrets = KubeSecretResolver(cluster.api_client(), k8s_namespace, ttl_s=0)
    assert secrets.secret("crm", "token") is None
    cluster.kubectl("create", "secret", "generic", "crm", "-n", k8s_namespace, "--from-literal=token=Bearer abc")
    assert secrets.secret("crm", "token") == "Bearer abc"
    assert secrets.secret("crm", "other") is None
