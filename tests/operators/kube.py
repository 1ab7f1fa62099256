"""Reading what the operator made, through kubectl: the tests look at the cluster as a user would."""

from __future__ import annotations

import json
from typing import Any

import yaml

from tests.fixtures.cluster import Cluster
from tests.operators.models import claims_manifest

KINDS = ("deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets")


def apply(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))


def get(cluster: Cluster, namespace: str, *what: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cluster.kubectl("get", "-n", namespace, *what, "-o", "json").stdout)
    return found


def children(cluster: Cluster, namespace: str) -> dict[str, list[dict[str, Any]]]:
    listing = get(cluster, namespace, ",".join(KINDS), "-l", "app.kubernetes.io/managed-by=aiplane-operator")
    out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    plural = {
        "Deployment": "deployments",
        "Service": "services",
        "HorizontalPodAutoscaler": "horizontalpodautoscalers",
        "PodDisruptionBudget": "poddisruptionbudgets",
    }
    for item in listing["items"]:
        out[plural[item["kind"]]].append(item)
    return out


def condition(model: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (model.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            found: dict[str, Any] = cond
            return found
    raise AssertionError(f"no {type_} condition yet: {model.get('status')}")


def model_named(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The Model as stored; ``status`` is ``{}`` until the operator first writes it."""
    model = get(cluster, namespace, "model", name)
    model.setdefault("status", {})
    return model


def claims(name: str = "claims-extractor", **spec: Any) -> dict[str, Any]:
    manifest = claims_manifest()
    manifest["metadata"]["name"] = name
    manifest["spec"].update(spec)
    return manifest


def events(cluster: Cluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    """The namespace's Events of one reason (RolloutPromoted, RolloutRolledBack, ...)."""
    items: list[dict[str, Any]] = get(cluster, namespace, "events", "--field-selector", f"reason={reason}")["items"]
    return items
