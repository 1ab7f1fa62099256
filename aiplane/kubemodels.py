"""Model endpoints from the cluster: a ``ModelResolver`` (the engine's and the gateway's interface) that watches
the Models of one namespace and answers with their ``status.endpoints``, the weights the Model operator moves
during a canary rollout.

In-cluster, the gateway and the workers route by it; ``aiplane dev`` keeps its static resolver.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import kubernetes
import pydantic

from aiplane.kubewatch import Body, NamespaceWatch
from crds.model import Endpoint
from policies.effective import Target

log = logging.getLogger(__name__)
PLURAL = "models"


class KubeModelResolver:
    """Endpoints per Model name, kept current by a watch in a daemon thread (``start``/``stop``)."""

    def __init__(self, client: kubernetes.client.ApiClient, namespace: str, watch_timeout_s: int = 60) -> None:
        self.namespace = namespace
        self._endpoints: dict[str, list[Endpoint]] = {}
        self._prediction_fields: dict[str, str] = {}
        #: Model name -> ``spec.region`` (None: none declared), what residency checks a model call against.
        self.regions: dict[str, str | None] = {}
        #: Model name -> its labels, what Policies select it by (``target``).
        self.labels: dict[str, dict[str, str]] = {}
        self._targets: dict[str, Target] = {}  # made once per change: asked on every prediction
        self._lock = threading.Lock()
        self._watch = NamespaceWatch(
            client, namespace, PLURAL, on_list=self._listed, on_event=self._changed, watch_timeout_s=watch_timeout_s
        )

    def endpoints(self, model: str) -> Sequence[Endpoint]:
        with self._lock:
            return self._endpoints.get(model, [])

    def target(self, model: str) -> Target:
        """The Model as Policies select it: this namespace and its labels (none while it is not known)."""
        found = self._targets.get(model)
        return found if found is not None else Target("Model", model, self.namespace, {})

    def prediction_field(self, model: str) -> str | None:
        """The answer field holding the predicted class, while the Model's rollout asks for drift analysis."""
        return self._prediction_fields.get(model)

    def start(self, synced_timeout_s: float = 30.0) -> KubeModelResolver:
        self._watch.start(synced_timeout_s)
        return self

    def stop(self) -> None:
        self._watch.stop()

    def _listed(self, items: list[Body]) -> None:
        # Only the Models gone since are dropped, the others overwritten: emptied for the moment of a relist
        # (every watch timeout), a call would find no endpoint, or no region for residency.
        listed = {item["metadata"]["name"] for item in items}
        with self._lock:
            for known in (self._endpoints, self._prediction_fields, self.regions, self.labels, self._targets):
                for gone in known.keys() - listed:
                    known.pop(gone, None)
        for item in items:
            self._set(item)

    def _changed(self, kind: str, body: Body) -> None:
        if kind != "DELETED":
            self._set(body)
            return
        name = body["metadata"]["name"]
        with self._lock:
            self._endpoints.pop(name, None)
            self.regions.pop(name, None)
            self.labels.pop(name, None)
            self._targets.pop(name, None)
            self._prediction_fields.pop(name, None)

    def _set(self, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        raw = (body.get("status") or {}).get("endpoints") or []
        try:
            endpoints = [Endpoint.model_validate(e) for e in raw]
        except pydantic.ValidationError:
            log.warning("ignoring malformed status.endpoints", extra={"model": name})
            return
        spec = body.get("spec") or {}
        # A spec.canary's analysis, or spec.rollout's while a new spec.version rolls out (the status names it).
        rolling = spec.get("rollout") if (body.get("status") or {}).get("canaryVersion") else None
        strategy = spec.get("canary") or rolling or {}
        field = (strategy.get("analysis") or {}).get("predictionField")
        region = (body.get("spec") or {}).get("region")
        with self._lock:
            self._endpoints[name] = endpoints
            self.regions[name] = str(region) if region else None
            labels = body["metadata"].get("labels") or {}
            self.labels[name] = {str(k): str(v) for k, v in labels.items()}
            self._targets[name] = Target("Model", name, self.namespace, self.labels[name])
            if isinstance(field, str) and field:
                self._prediction_fields[name] = field
            else:
                self._prediction_fields.pop(name, None)
