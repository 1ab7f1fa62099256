"""Model endpoints from the cluster: a ``ModelResolver`` (the engine's and the gateway's interface) that watches
the Models of one namespace and answers with their ``status.endpoints``, the weights the Model operator moves
during a canary rollout.

In-cluster, the gateway and the workers route by it; ``aiplane dev`` keeps its static resolver.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import kubernetes
import pydantic

from crds.model import Endpoint

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = "aiplane.io", "v1alpha1", "models"


class KubeModelResolver:
    """Endpoints per Model name, kept current by a watch in a daemon thread (``start``/``stop``)."""

    def __init__(self, client: kubernetes.client.ApiClient, namespace: str, watch_timeout_s: int = 60) -> None:
        self.api = kubernetes.client.CustomObjectsApi(client)
        self.namespace = namespace
        self.watch_timeout_s = watch_timeout_s
        self._endpoints: dict[str, list[Endpoint]] = {}
        self._prediction_fields: dict[str, str] = {}
        #: Model name -> ``spec.region`` (None: none declared), what residency checks a model call against.
        self.regions: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._watch: Any = None
        self._thread = threading.Thread(target=self._run, name=f"models-{namespace}", daemon=True)

    def endpoints(self, model: str) -> Sequence[Endpoint]:
        with self._lock:
            return self._endpoints.get(model, [])

    def prediction_field(self, model: str) -> str | None:
        """The answer field holding the predicted class, while the Model's canary asks for drift analysis."""
        return self._prediction_fields.get(model)

    def start(self, synced_timeout_s: float = 30.0) -> KubeModelResolver:
        self._thread.start()
        if not self._synced.wait(synced_timeout_s):
            raise TimeoutError(f"could not list Models in {self.namespace} within {synced_timeout_s}s")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(self.watch_timeout_s + 5)

    def _set(self, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        raw = (body.get("status") or {}).get("endpoints") or []
        try:
            endpoints = [Endpoint.model_validate(e) for e in raw]
        except pydantic.ValidationError:
            log.warning("ignoring malformed status.endpoints", extra={"model": name})
            return
        canary = (body.get("spec") or {}).get("canary") or {}
        field = (canary.get("analysis") or {}).get("predictionField")
        region = (body.get("spec") or {}).get("region")
        with self._lock:
            self._endpoints[name] = endpoints
            self.regions[name] = str(region) if region else None
            if isinstance(field, str) and field:
                self._prediction_fields[name] = field
            else:
                self._prediction_fields.pop(name, None)

    def _run(self) -> None:
        lister: Callable[..., Any] = self.api.list_namespaced_custom_object
        while not self._stop.is_set():
            try:
                listing = lister(GROUP, VERSION, self.namespace, PLURAL)
                # Only the Models gone since are dropped, the others overwritten: emptied for the moment of a
                # relist (every watch timeout), a call would find no endpoint, or no region for residency.
                listed = {item["metadata"]["name"] for item in listing.get("items", [])}
                with self._lock:
                    for known in (self._endpoints, self._prediction_fields, self.regions):
                        for gone in known.keys() - listed:
                            known.pop(gone, None)
                for item in listing.get("items", []):
                    self._set(item)
                self._synced.set()
                version = listing["metadata"]["resourceVersion"]
                # The watch helper is untyped upstream.
                new_watch: Callable[[], Any] = kubernetes.watch.Watch
                self._watch = new_watch()
                for event in self._watch.stream(
                    lister, GROUP, VERSION, self.namespace, PLURAL,
                    resource_version=version, timeout_seconds=self.watch_timeout_s,
                ):  # fmt: skip
                    body = event["object"]
                    if event["type"] == "DELETED":
                        with self._lock:
                            self._endpoints.pop(body["metadata"]["name"], None)
                            self.regions.pop(body["metadata"]["name"], None)
                            self._prediction_fields.pop(body["metadata"]["name"], None)
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self._set(body)
                    if self._stop.is_set():
                        break
            except Exception:  # the watch must outlive any one failure (410 Gone, a restarting apiserver)
                if self._stop.is_set():
                    break
                log.warning("model watch failed; listing again", exc_info=True)
                self._stop.wait(1.0)
