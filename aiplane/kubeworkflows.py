"""Workflow definitions from the cluster: registers every Workflow of one namespace that the Workflow operator
found valid into the engine's store, so the in-cluster gateway and workers run what ``kubectl apply`` declared.

The operator publishes ``status.version`` (the content version, ``crds.checks.version_of``) once a spec is valid;
this sync registers the spec when that version matches the spec it sees, which makes it the version new tasks get.
Running tasks keep the version they started with (the engine never changes a stored version). An invalid change
leaves the last valid version in place, and a deleted Workflow's versions stay for the tasks that run them.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import kubernetes
import pydantic

from aiplane.kubewatch import NamespaceWatch
from crds import checks
from crds.workflow import WorkflowSpec

log = logging.getLogger(__name__)
PLURAL = "workflows"


class Registry(Protocol):
    """What the sync needs of the engine (``engine.Engine`` is one)."""

    def register_workflow(self, name: str, spec: WorkflowSpec) -> str: ...


def publishable(body: dict[str, Any]) -> tuple[str, WorkflowSpec] | None:
    """(version, spec) when the operator found this very spec valid; None otherwise (not validated yet, invalid,
    or changed since)."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    version = status.get("version")
    if not version or status.get("observedGeneration") != meta.get("generation"):
        return None
    conditions = status.get("conditions") or []
    if not any(c.get("type") == "Valid" and c.get("status") == "True" for c in conditions):
        return None
    try:
        spec = WorkflowSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError:
        return None
    return (version, spec) if checks.version_of(spec) == version else None


class KubeWorkflowSync:
    """Keeps the engine's workflow heads on the cluster's valid Workflows, by a watch in a daemon thread."""

    def __init__(
        self, client: kubernetes.client.ApiClient, namespace: str, registry: Registry, watch_timeout_s: int = 60
    ) -> None:
        self.registry = registry
        # name -> the version this process registered last, so a relist registers nothing again.
        self.registered: dict[str, str] = {}
        #: name -> the Workflow's labels as last seen (kept after a delete: its running tasks are still governed),
        #: what Policies select workflows by.
        self.labels: dict[str, dict[str, str]] = {}
        #: name -> the spec registered last: which Connectors it publishes to (Kafka topic retention).
        self.specs: dict[str, WorkflowSpec] = {}
        self._watch = NamespaceWatch(
            client,
            namespace,
            PLURAL,
            on_list=self._listed,
            on_event=self._changed,
            watch_timeout_s=watch_timeout_s,
        )

    def start(self, synced_timeout_s: float = 30.0) -> KubeWorkflowSync:
        self._watch.start(synced_timeout_s)
        return self

    def stop(self) -> None:
        self._watch.stop()

    def _listed(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            self._seen(item)

    def _changed(self, type_: str, body: dict[str, Any]) -> None:
        if type_ != "DELETED":  # a deleted Workflow's versions stay for the tasks that run them
            self._seen(body)

    def _seen(self, body: dict[str, Any]) -> None:
        name = str(body["metadata"]["name"])
        self.labels[name] = {str(k): str(v) for k, v in ((body["metadata"].get("labels") or {}).items())}
        found = publishable(body)
        if found is None or self.registered.get(name) == found[0]:
            return
        version, spec = found
        self.specs[name] = spec
        try:
            registered = self.registry.register_workflow(name, spec)
        except Exception:  # the store is down, or refuses it: the next event or relist tries again
            log.warning("could not register workflow", extra={"workflow": name, "version": version}, exc_info=True)
            return
        self.registered[name] = registered
        log.info("workflow registered", extra={"workflow": name, "version": registered})
