"""The operator's few writes to the apiserver: server-side apply of children, deleting superseded ones, the
Model's status. Blocking calls of the official client; the handlers run them in threads."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import kubernetes

from operators.model import gpus, naming

log = logging.getLogger(__name__)
APPLY = "application/apply-patch+yaml"  # JSON is YAML, so the client's JSON body is a valid apply patch
MERGE = "application/merge-patch+json"


class Kube:
    """Typed API groups over one connection pool."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.core = kubernetes.client.CoreV1Api(client)
        self.apps = kubernetes.client.AppsV1Api(client)
        self.autoscaling = kubernetes.client.AutoscalingV2Api(client)
        self.policy = kubernetes.client.PolicyV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)

    def _patcher(self, kind: str) -> Any:
        return {
            "Deployment": self.apps.patch_namespaced_deployment,
            "Service": self.core.patch_namespaced_service,
            "HorizontalPodAutoscaler": self.autoscaling.patch_namespaced_horizontal_pod_autoscaler,
            "PodDisruptionBudget": self.policy.patch_namespaced_pod_disruption_budget,
        }[kind]

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply as ``aiplane-operator``, taking over fields another manager set (``force``): the
        operator is the owner of these objects. Returns the object as stored."""
        meta = obj["metadata"]
        response = self._patcher(obj["kind"])(
            meta["name"],
            meta["namespace"],
            obj,
            field_manager=naming.FIELD_MANAGER,
            force=True,
            _content_type=APPLY,
            _preload_content=False,
        )
        stored: dict[str, Any] = json.loads(response.data)
        return stored

    def delete(self, kind: str, namespace: str, name: str) -> None:
        deleter = {
            "Deployment": self.apps.delete_namespaced_deployment,
            "Service": self.core.delete_namespaced_service,
            "HorizontalPodAutoscaler": self.autoscaling.delete_namespaced_horizontal_pod_autoscaler,
            "PodDisruptionBudget": self.policy.delete_namespaced_pod_disruption_budget,
        }[kind]
        try:
            # Background: the Deployment's ReplicaSets and pods go with it through the garbage collector.
            deleter(name, namespace, propagation_policy="Background", _preload_content=False)
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                raise

    @staticmethod
    def _items(lister: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """A list call's items as plain dicts (the raw JSON: no typed models to build and throw away)."""
        items: list[dict[str, Any]] = json.loads(lister(*args, _preload_content=False, **kwargs).data)["items"]
        return items

    def gpu_room(self, namespace: str, gpu_type: str | None) -> gpus.Room:
        """GPUs free on the nodes of ``gpu_type`` and left in ``namespace``'s quota; read only during GPU
        rollouts (a cluster-wide pod list is not something to do on every reconcile)."""
        nodes = self._items(self.core.list_node)
        pods = self._items(self.core.list_pod_for_all_namespaces, field_selector="spec.nodeName!=")
        quotas = self._items(self.core.list_namespaced_resource_quota, namespace)
        return gpus.Room(free=gpus.free_gpus(nodes, pods, gpu_type), quota_left=gpus.quota_left(quotas))

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> str:
        """Merge ``status`` into the Model's; returns the Model's resourceVersion after the write."""
        response: Any = self.custom.patch_namespaced_custom_object_status(
            naming.GROUP,
            naming.VERSION,
            namespace,
            naming.PLURAL,
            name,
            {"status": status},
            _content_type=MERGE,
            _preload_content=False,
        )
        return str(json.loads(response.data)["metadata"]["resourceVersion"])


def new_api_client(pool_size: int = 16) -> kubernetes.client.ApiClient:
    """A client for the cluster the operator runs in, or KUBECONFIG's outside one."""
    configuration = kubernetes.client.Configuration()
    # The loaders are untyped upstream; name their type here rather than silencing the checker.
    load_incluster: Callable[..., None] = kubernetes.config.load_incluster_config
    load_kubeconfig: Callable[..., None] = kubernetes.config.load_kube_config
    try:
        load_incluster(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        # KUBECONFIG as it is now: the library's default path was read from the environment when it was imported.
        load_kubeconfig(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration)
    # The handlers apply children from several threads at once; the default pool of 4 would make them queue.
    configuration.connection_pool_maxsize = pool_size
    return kubernetes.client.ApiClient(configuration)
