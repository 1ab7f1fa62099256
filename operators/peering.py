"""Leader election for the operators, by kopf peering: every replica keeps its keep-alive in one cluster-wide
``ClusterKopfPeering`` object, and the replicas with a lower priority pause while a higher one lives.

kopf leaves installing its peering CRDs to the user; aiplane ships them (``aiplane crds`` prints them with its
own) so that nothing has to be fetched. The priority is the replica's start time, earliest highest: a replica
that starts while a leader lives never takes over, and when the leader dies the oldest survivor does.
"""

from __future__ import annotations

import time
from typing import Any

PEERING_NAME = "aiplane-operator"
GROUP = "kopf.dev"


def _crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "Keep-alives of the operator replicas that share this peering; "
                            "kopf writes one entry per replica under status.",
                            "properties": {
                                # Keys are replica identities, values kopf's (priority, lifetime, lastseen).
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            },
                        }
                    },
                }
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    return [
        _crd("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
        _crd("KopfPeering", "kopfpeerings", "Namespaced"),
    ]


def peering_object() -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING_NAME}}


def start_priority(now: float | None = None) -> int:
    """Earlier start, higher priority; milliseconds, so replicas started together still differ."""
    started_ms = int((time.time() if now is None else now) * 1000)
    return -started_ms
