"""Pure builders: a Model in, the Kubernetes objects that serve it out (plain dicts, ready for server-side apply).

Nothing here talks to a cluster, so every rule about what a Model turns into is unit-tested on its own. The
reconcile in ``handlers`` only applies what these return and folds the children's state back into status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crds.model import Model
from operators.model import naming

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
# The taint GPU node pools carry (NVIDIA's GPU operator, GKE and EKS alike); GPU pods must tolerate it.
GPU_TOLERATION: dict[str, str] = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
# What the concurrency autoscaling signal is called: BentoML's own in-flight gauge, served to the HPA through
# the custom metrics API (prometheus-adapter or similar).
CONCURRENCY_METRIC = "bentoml_service_request_in_progress"
CONTAINER = "bentoml"


@dataclass(frozen=True)
class Owner:
    """The identity of the Model that owns the children (from its metadata)."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        # controller + blockOwnerDeletion: the garbage collector deletes the children with the Model, and a
        # foreground deletion of the Model waits for them.
        return {
            "apiVersion": f"{naming.GROUP}/{naming.VERSION}",
            "kind": "Model",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class LiveVersion:
    """One version that runs: the stable one, and during a rollout the canary.

    ``replicas`` None leaves the count to the HorizontalPodAutoscaler (the field is then not applied at all, so
    the operator never fights the autoscaler over it).
    """

    version: str
    bento: str
    image: str
    replicas: int | None


def _metadata(owner: Owner, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": owner.namespace, "labels": labels, "ownerReferences": [owner.reference()]}


def tolerations(model: Model) -> list[dict[str, str]]:
    declared = [t.model_dump(by_alias=True, exclude_none=True) for t in model.spec.tolerations]
    gpu = model.spec.resources.gpu
    if gpu is not None and gpu.count > 0 and not any(_tolerates_gpu(t) for t in declared):
        declared.append(dict(GPU_TOLERATION))
    return declared


def _tolerates_gpu(toleration: dict[str, str]) -> bool:
    key = toleration.get("key")
    effect = toleration.get("effect")
    matches_key = key == GPU_RESOURCE or (key is None and toleration.get("operator") == "Exists")
    return matches_key and effect in (None, "NoSchedule") and toleration.get("operator") == "Exists"


def node_selector(model: Model) -> dict[str, str]:
    selector = dict(model.spec.node_selector)
    gpu = model.spec.resources.gpu
    if gpu is not None and gpu.count > 0 and gpu.type is not None:
        selector[GPU_PRODUCT_LABEL] = gpu.type
    return selector


def resources(model: Model) -> dict[str, dict[str, str]]:
    spec = model.spec.resources
    requests = {"cpu": str(spec.cpu), "memory": str(spec.memory)}
    # Memory is limited as requested (a model that grows past it is OOM-killed rather than starving its
    # neighbours); CPU is not limited, so a replica can burst while the HPA catches up.
    limits = {"memory": str(spec.memory)}
    if spec.gpu is not None and spec.gpu.count > 0:
        # Extended resources are requested through limits; Kubernetes copies them to requests.
        limits[GPU_RESOURCE] = str(spec.gpu.count)
    return {"requests": requests, "limits": limits}


def deployment(model: Model, owner: Owner, live: LiveVersion) -> dict[str, Any]:
    port = model.spec.port
    labels = naming.labels(owner.name, live.version)
    probe = {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": live.image,
        # `command`, not `args`: the image's own entrypoint (aiplane's is `aiplane`, a containerized bento's is a
        # shell wrapper) would otherwise take these as its arguments.
        "command": ["bentoml", "serve", live.bento, "--host", "0.0.0.0", "--port", str(port)],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": [
            {"name": "AIPLANE_MODEL", "value": owner.name},
            {"name": "AIPLANE_MODEL_VERSION", "value": live.version},
        ],
        "resources": resources(model),
        "readinessProbe": probe,
        # Loading weights can take minutes; liveness only starts judging once the server is up.
        "startupProbe": {"httpGet": {"path": "/livez", "port": "http"}, "periodSeconds": 5, "failureThreshold": 120},
        "livenessProbe": {"httpGet": {"path": "/livez", "port": "http"}, "periodSeconds": 10},
    }
    pod_spec: dict[str, Any] = {"containers": [container], "enableServiceLinks": False}
    selector = node_selector(model)
    if selector:
        pod_spec["nodeSelector"] = selector
    tolerated = tolerations(model)
    if tolerated:
        pod_spec["tolerations"] = tolerated
    spec: dict[str, Any] = {
        "selector": {"matchLabels": naming.selector_labels(owner.name, live.version)},
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        # GPU replicas are scarce: replace one at a time and never ask for a surge replica's GPUs.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
        if _uses_gpu(model)
        else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
    }
    if live.replicas is not None:
        spec["replicas"] = live.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, naming.child_name(owner.name, live.version), labels),
        "spec": spec,
    }


def served(spec: Mapping[str, Any]) -> tuple[str, str] | None:
    """The bento and image a Deployment made by ``deployment`` runs, read back from its ``spec``; None for one
    this module did not make. A version rollout keeps the stable version as it runs, whatever the spec says now."""
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    for container in containers:
        command = container.get("command") or []
        if container.get("name") == CONTAINER and command[:2] == ["bentoml", "serve"] and len(command) > 2:
            return str(command[2]), str(container.get("image") or "")
    return None


def _uses_gpu(model: Model) -> bool:
    gpu = model.spec.resources.gpu
    return gpu is not None and gpu.count > 0


def service(model: Model, owner: Owner, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, naming.child_name(owner.name, version), naming.labels(owner.name, version)),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.selector_labels(owner.name, version),
            "ports": [{"name": "http", "port": model.spec.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def service_url(model: Model, owner: Owner, version: str) -> str:
    """The in-cluster URL of a version's Service: what ``status.endpoints`` publishes for the gateway."""
    return f"http://{naming.child_name(owner.name, version)}.{owner.namespace}.svc:{model.spec.port}"


def pod_disruption_budget(owner: Owner, version: str) -> dict[str, Any]:
    # One replica at a time may be evicted (node drains, GPU maintenance): a single-replica model can still be
    # drained, a larger one never loses more than one replica's capacity.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, naming.child_name(owner.name, version), naming.labels(owner.name, version)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": naming.selector_labels(owner.name, version)}},
    }


def autoscaled(model: Model) -> bool:
    """Whether an HPA scales the stable version: not at zero (HPAs need minReplicas >= 1), nor when minReplicas
    equals maxReplicas (it would have nothing to decide, and cost the controller-manager a metrics query and an
    Event every sync)."""
    return 1 <= model.spec.min_replicas < model.spec.max_replicas


def horizontal_pod_autoscaler(model: Model, owner: Owner, stable_version: str) -> dict[str, Any] | None:
    """The autoscaler of the stable version, or None when it is not autoscaled (see ``autoscaled``)."""
    spec = model.spec
    if not autoscaled(model):
        return None
    if spec.scale_metric == "cpu":
        metric: dict[str, Any] = {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": spec.scale_target}},
        }
    else:
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": CONCURRENCY_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(spec.scale_target)},
            },
        }
    labels = {**naming.CHILD_SELECTOR, naming.LABEL_MODEL: owner.name}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(owner, owner.name, labels),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": naming.child_name(owner.name, stable_version),
            },
            "minReplicas": spec.min_replicas,
            "maxReplicas": spec.max_replicas,
            "metrics": [metric],
        },
    }
