"""kopf handlers of the Policy operator: thin, each hands a Policy and what its namespace holds to ``Reconciler``.

An index keeps the kind, name and labels of every Workflow, Model and Connector per namespace, from kopf's own
watches, so an evaluation reads nothing from the apiserver. One of them that comes, goes or changes evaluates the
Policies of its namespace again: the count and names in a Policy's status follow the resources it selects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from operators.connector.config import Config as ConnectorConfig
from operators.policy.evaluation import Seen
from operators.policy.reconciler import Reconciler

GROUP, VERSION = "aiplane.io", "v1alpha1"
POLICIES = (GROUP, VERSION, "policies")
# kopf fixes a timer's interval when the handler is registered: the Connector operator's recheck, read at import.
RECHECK_S = ConnectorConfig.from_env().recheck_s


@kopf.index(*POLICIES)
def policy_bodies(*, namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {namespace: {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}}


@kopf.index(GROUP, VERSION, "workflows")
def policy_workflows(*, namespace: str | None, name: str, labels: Mapping[str, str], **_: Any) -> dict[Any, Any]:
    return {namespace: Seen("Workflow", name, dict(labels))}


@kopf.index(GROUP, VERSION, "models")
def policy_models(*, namespace: str | None, name: str, labels: Mapping[str, str], **_: Any) -> dict[Any, Any]:
    return {namespace: Seen("Model", name, dict(labels))}


@kopf.index(GROUP, VERSION, "connectors")
def policy_connectors(
    *, namespace: str | None, name: str, labels: Mapping[str, str], spec: kopf.Spec, **_: Any
) -> dict[Any, Any]:
    return {namespace: Seen("Connector", name, dict(labels), kafka_source=spec.get("type") == "kafkaSource")}


INDEXES = ("policy_workflows", "policy_models", "policy_connectors")


def _resources(namespace: str | None, kw: Mapping[str, Any]) -> list[Seen]:
    return [seen for index in INDEXES for seen in kw[index].get(namespace, [])]


@kopf.on.resume(*POLICIES)
@kopf.on.create(*POLICIES)
@kopf.on.update(*POLICIES)
async def evaluate_policy(*, memo: Any, body: kopf.Body, namespace: str | None, **kw: Any) -> None:
    reconciler: Reconciler = memo.policy_reconciler
    await reconciler.converge(body, _resources(namespace, kw))


@kopf.timer(*POLICIES, interval=RECHECK_S, initial_delay=RECHECK_S)
async def recheck_policy(*, memo: Any, body: kopf.Body, namespace: str | None, **kw: Any) -> None:
    # Secrets are not watched (the operator may only get them, one by one): a PII key created later shows here.
    reconciler: Reconciler = memo.policy_reconciler
    await reconciler.converge(body, _resources(namespace, kw))


@kopf.on.event(*POLICIES)
async def forget_deleted_policy(*, memo: Any, type: str, namespace: str | None, name: str, uid: str, **_: Any) -> None:
    if type == "DELETED":
        reconciler: Reconciler = memo.policy_reconciler
        reconciler.forget(str(namespace), name, uid)


async def _reevaluate(memo: Any, namespace: str | None, kw: Mapping[str, Any]) -> None:
    reconciler: Reconciler = memo.policy_reconciler
    resources = _resources(namespace, kw)
    for body in list(kw["policy_bodies"].get(namespace, [])):
        await reconciler.converge(body, resources)


@kopf.on.event(GROUP, VERSION, "workflows", id="policy_selection_workflows")
async def workflow_for_policies(*, memo: Any, namespace: str | None, **kw: Any) -> None:
    await _reevaluate(memo, namespace, kw)


@kopf.on.event(GROUP, VERSION, "models", id="policy_selection_models")
async def model_for_policies(*, memo: Any, namespace: str | None, **kw: Any) -> None:
    await _reevaluate(memo, namespace, kw)


@kopf.on.event(GROUP, VERSION, "connectors", id="policy_selection_connectors")
async def connector_for_policies(*, memo: Any, namespace: str | None, **kw: Any) -> None:
    await _reevaluate(memo, namespace, kw)
