"""kopf handlers of the Workflow operator: thin, each hands a Workflow and its namespace to ``Reconciler``.

Indexes keep what validation needs of the namespace (the names of its Models, Connectors and Policies, and whether
the Models and Connectors are Ready) from kopf's own watches, so a validation reads nothing from the apiserver.
A Model, Connector or Policy that comes, goes or changes readiness validates the Workflows of its namespace again:
a Workflow that named a missing Model turns Valid once the Model is created.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from operators.workflow.reconciler import Reconciler
from operators.workflow.validation import ConnectorSeen, Namespace

GROUP, VERSION = "aiplane.io", "v1alpha1"
WORKFLOWS = (GROUP, VERSION, "workflows")
MODELS = (GROUP, VERSION, "models")
CONNECTORS = (GROUP, VERSION, "connectors")
POLICIES = (GROUP, VERSION, "policies")


def _ready(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


@kopf.index(*WORKFLOWS)
def workflow_bodies(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {namespace: {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}}


@kopf.index(*MODELS)
def namespace_models(*, namespace: str | None, name: str, status: kopf.Status, **_: Any) -> dict[Any, Any]:
    return {namespace: (name, _ready(status))}


@kopf.index(*CONNECTORS)
def namespace_connectors(
    *, namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[Any, Any]:
    queries = tuple(str(q.get("name")) for q in (spec.get("postgres") or {}).get("queries") or [])
    return {namespace: (name, ConnectorSeen(type=str(spec.get("type")), queries=queries, ready=_ready(status)))}


@kopf.index(*POLICIES)
def namespace_policies(*, namespace: str | None, name: str, **_: Any) -> dict[Any, Any]:
    return {namespace: name}


def _namespace(namespace: str | None, kw: Mapping[str, Any]) -> Namespace:
    return Namespace(
        models=dict(kw["namespace_models"].get(namespace, [])),
        connectors=dict(kw["namespace_connectors"].get(namespace, [])),
        policies=frozenset(kw["namespace_policies"].get(namespace, [])),
        workflows=frozenset(b["metadata"].get("name") for b in kw["workflow_bodies"].get(namespace, [])),
    )


@kopf.on.resume(*WORKFLOWS)
@kopf.on.create(*WORKFLOWS)
@kopf.on.update(*WORKFLOWS)
async def validate_workflow(*, memo: Any, body: kopf.Body, namespace: str | None, **kw: Any) -> None:
    reconciler: Reconciler = memo.workflow_reconciler
    world = _namespace(namespace, kw)
    await reconciler.converge(body, world)
    # Agents of other Workflows may run this one: one that named it before it existed turns Valid now.
    name = body.metadata.get("name")
    for other in kw["workflow_bodies"].get(namespace, []):
        if other["metadata"].get("name") != name and _runs_workflow(other["spec"], name):
            await reconciler.converge(other, world)


def _runs_workflow(spec: Mapping[str, Any], name: Any) -> bool:
    return any(
        (action.get("workflow") or {}).get("name") == name
        for step in spec.get("steps") or []
        for action in (step.get("agent") or {}).get("actions") or []
    )


@kopf.on.event(*WORKFLOWS)
async def forget_deleted_workflow(
    *, memo: Any, type: str, namespace: str | None, name: str, uid: str, **_: Any
) -> None:
    if type == "DELETED":
        reconciler: Reconciler = memo.workflow_reconciler
        reconciler.forget(str(namespace), name, uid)


async def _revalidate(memo: Any, namespace: str | None, kw: Mapping[str, Any]) -> None:
    bodies = list(kw["workflow_bodies"].get(namespace, []))
    if not bodies:
        return  # most Model events (status moves of serving replicas) are in namespaces without Workflows
    reconciler: Reconciler = memo.workflow_reconciler
    world = _namespace(namespace, kw)
    for body in bodies:
        await reconciler.converge(body, world)


@kopf.on.event(*MODELS)
async def model_seen(*, memo: Any, namespace: str | None, **kw: Any) -> None:
    await _revalidate(memo, namespace, kw)


@kopf.on.event(*CONNECTORS)
async def connector_seen(*, memo: Any, namespace: str | None, **kw: Any) -> None:
    await _revalidate(memo, namespace, kw)


@kopf.on.event(*POLICIES)
async def policy_seen(*, memo: Any, namespace: str | None, **kw: Any) -> None:
    await _revalidate(memo, namespace, kw)
