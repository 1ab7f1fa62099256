"""kopf handlers of the Connector operator: thin, each hands a Connector to ``Reconciler.converge``.

Indexes keep the newest version of each Connector and what its consumer Deployment reports, from kopf's own
watches. The recheck timer asks the broker again (a topic created later, a broker back) and re-reads the Secrets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from operators.connector import builders
from operators.connector.config import Config
from operators.connector.reconciler import Reconciler
from operators.connector.status import Consumers

CONNECTORS = (builders.GROUP, builders.VERSION, "connectors")
# kopf fixes a timer's interval when the handler is registered, so it is read from the environment at import.
RECHECK_S = Config.from_env().recheck_s


@kopf.index(*CONNECTORS)
def connector_bodies(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}}


@kopf.index("apps", "v1", "deployments", labels=builders.CHILD_SELECTOR)
def connector_consumers(
    *, namespace: str | None, labels: Mapping[str, str], spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[Any, Any] | None:
    connector = labels.get(builders.LABEL_CONNECTOR)
    if connector is None:
        return None
    replicas = spec.get("replicas")
    desired = int(replicas) if replicas is not None else 1
    return {(namespace, connector): Consumers(desired=desired, ready=int(status.get("readyReplicas") or 0))}


async def _converge(
    memo: Any, body: Mapping[str, Any] | None, namespace: str | None, name: str, kw: Mapping[str, Any], *, ask: bool
) -> None:
    key = (namespace, name)
    latest = next(iter(kw["connector_bodies"].get(key, [])), None) or body
    if latest is None:
        return
    consumers: Consumers | None = next(iter(kw["connector_consumers"].get(key, [])), None)
    reconciler: Reconciler = memo.connector_reconciler
    await reconciler.converge(latest, consumers, ask_broker=ask)


@kopf.on.resume(*CONNECTORS)
@kopf.on.create(*CONNECTORS)
@kopf.on.update(*CONNECTORS)
async def reconcile_connector(*, memo: Any, body: kopf.Body, namespace: str | None, name: str, **kw: Any) -> None:
    await _converge(memo, body, namespace, name, kw, ask=True)


@kopf.timer(*CONNECTORS, interval=RECHECK_S, initial_delay=RECHECK_S)
async def recheck_connector(*, memo: Any, body: kopf.Body, namespace: str | None, name: str, **kw: Any) -> None:
    await _converge(memo, body, namespace, name, kw, ask=True)


@kopf.on.event(*CONNECTORS)
async def forget_deleted_connector(
    *, memo: Any, type: str, namespace: str | None, name: str, uid: str, **_: Any
) -> None:
    if type == "DELETED":
        reconciler: Reconciler = memo.connector_reconciler
        reconciler.forget(str(namespace), name, uid)


@kopf.on.event("apps", "v1", "deployments", labels=builders.CHILD_SELECTOR)
async def consumers_changed(
    *, memo: Any, type: str, namespace: str | None, labels: Mapping[str, str], meta: kopf.Meta, **kw: Any
) -> None:
    connector = labels.get(builders.LABEL_CONNECTOR)
    if connector is None:
        return
    reconciler: Reconciler = memo.connector_reconciler
    generation = None if type == "DELETED" else int(meta.get("generation") or 0)
    for owner in meta.get("ownerReferences") or []:
        reconciler.invalidate(str(owner.get("uid")), generation)
    await _converge(memo, None, namespace, connector, kw, ask=False)
