"""kopf handlers of the Model operator: thin, each hands its trigger to ``Reconciler.converge``.

Indexes keep what the operator needs to know of the children (one small record per Deployment, the scheduler's
message per stuck pod) in memory, from kopf's own watches, so a reconcile reads nothing from the apiserver.
kopf passes every index to every handler as a keyword argument named after the index function.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from operators.model import gpus, naming, version_rollout
from operators.model.config import Config
from operators.model.reconciler import DeploymentSeen, Reconciler, State, deployment_seen, unschedulable_message

MODELS = (naming.GROUP, naming.VERSION, naming.PLURAL)
# kopf fixes a timer's interval when the handler is registered, so it is read from the environment at import.
ROLLOUT_TICK_S = Config.from_env().rollout_tick_s


@kopf.index(*MODELS)
def model_bodies(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}}


@kopf.index("apps", "v1", "deployments", labels=naming.CHILD_SELECTOR)
def model_deployments(
    *, namespace: str | None, name: str, labels: Mapping[str, str], meta: kopf.Meta, spec: kopf.Spec,
    status: kopf.Status, **_: Any,
) -> dict[Any, Any] | None:  # fmt: skip
    model, version = labels.get(naming.LABEL_MODEL), labels.get(naming.LABEL_VERSION)
    if model is None or version is None:
        return None
    return {(namespace, model): deployment_seen(name, version, meta=meta, spec=spec, status=status)}


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=naming.CHILD_SELECTOR)
def model_autoscalers(
    *, namespace: str | None, name: str, labels: Mapping[str, str], **_: Any
) -> dict[Any, Any] | None:
    model = labels.get(naming.LABEL_MODEL)
    return None if model is None else {(namespace, model): name}


@kopf.index("", "v1", "pods", labels=naming.CHILD_SELECTOR)
def model_unschedulable(
    *, namespace: str | None, labels: Mapping[str, str], status: kopf.Status, **_: Any
) -> dict[Any, Any] | None:
    model, version = labels.get(naming.LABEL_MODEL), labels.get(naming.LABEL_VERSION)
    message = unschedulable_message(status)
    if model is None or version is None or message is None:
        return None
    return {(namespace, model): (version, message)}


@kopf.index("", "v1", "resourcequotas")
def model_gpu_quotas(*, namespace: str | None, name: str, status: kopf.Status, **_: Any) -> dict[Any, Any] | None:
    seen = gpus.gpu_quota_seen(name, status)
    return None if seen is None else {namespace: seen}


async def _converge(
    memo: Any, body: Mapping[str, Any] | None, namespace: str | None, name: str, kw: dict[str, Any]
) -> None:
    key = (namespace, name)

    def read() -> State | None:
        # The index holds the newest version of the Model kopf has seen; ``body`` is the one of the trigger.
        latest = next(iter(kw["model_bodies"].get(key, [])), None) or body
        if latest is None:
            return None
        deployments: list[DeploymentSeen] = list(kw["model_deployments"].get(key, []))
        unschedulable: list[tuple[str, str]] = list(kw["model_unschedulable"].get(key, []))
        autoscalers: list[str] = list(kw["model_autoscalers"].get(key, []))
        quotas: list[gpus.QuotaSeen] = list(kw["model_gpu_quotas"].get(namespace, []))
        return latest, deployments, unschedulable, autoscalers, quotas

    reconciler: Reconciler = memo.model_reconciler
    await reconciler.converge((str(namespace), name), read)


@kopf.on.event(*MODELS)
async def model_changed(
    *, memo: Any, type: str | None, body: kopf.Body, namespace: str | None, name: str, uid: str, **kw: Any
) -> None:
    """Every Model event, the initial listing (``type`` None) included, so a restarted operator resumes them all.

    An event handler, not kopf's create/update/resume ones: those write the last handled spec and their progress
    into the Model's annotations after every run, a write (and a watch event back) per Model per change that a
    level-based reconcile does not need. Retries are the reconciler's own (see ``Reconciler.converge``).
    """
    reconciler: Reconciler = memo.model_reconciler
    if type == "DELETED":
        reconciler.forget(str(namespace), name, uid)
        return
    # The echo of the operator's own status write changes nothing a reconcile reads.
    if reconciler.is_own_write(uid, body):
        return
    await _converge(memo, body, namespace, name, kw)


@kopf.timer(*MODELS, interval=ROLLOUT_TICK_S, when=lambda spec, status, **_: version_rollout.ticking(spec, status))
async def rollout_tick(*, memo: Any, body: kopf.Body, namespace: str | None, name: str, **kw: Any) -> None:
    await _converge(memo, body, namespace, name, kw)


async def _child_changed(memo: Any, namespace: str | None, labels: Mapping[str, str], kw: dict[str, Any]) -> None:
    model = labels.get(naming.LABEL_MODEL)
    if model is None:
        return
    await _converge(memo, None, namespace, model, kw)


@kopf.on.event("apps", "v1", "deployments", labels=naming.CHILD_SELECTOR)
async def deployment_changed(
    *, memo: Any, type: str, namespace: str | None, name: str, labels: Mapping[str, str], meta: kopf.Meta, **kw: Any
) -> None:
    reconciler: Reconciler = memo.model_reconciler
    generation = None if type == "DELETED" else int(meta.get("generation") or 0)
    reconciler.invalidate(str(namespace), "Deployment", name, generation)
    await _child_changed(memo, namespace, labels, kw)


@kopf.on.event("", "v1", "pods", labels=naming.CHILD_SELECTOR)
async def pod_changed(
    *, memo: Any, type: str, namespace: str | None, labels: Mapping[str, str], status: kopf.Status, **kw: Any
) -> None:
    # Pods matter here only while one cannot be scheduled; readiness comes from the Deployment's status.
    if unschedulable_message(status) is not None or type == "DELETED":
        await _child_changed(memo, namespace, labels, kw)


@kopf.on.event("", "v1", "resourcequotas")
async def quota_changed(
    *, memo: Any, type: str | None, namespace: str | None, name: str, status: kopf.Status, **kw: Any
) -> None:
    """A GPU quota moved (its limit, or what the namespace's pods hold): the GPU Models there report it."""
    if type != "DELETED" and gpus.gpu_quota_seen(name, status) is None:
        return
    models: Mapping[Any, Any] = kw["model_bodies"]
    for ns, model in [key for key in models if key[0] == namespace]:
        body = next(iter(models.get((ns, model), [])), None)
        if gpus.asks_for_gpus((body or {}).get("spec") or {}):
            await _converge(memo, None, ns, model, kw)
