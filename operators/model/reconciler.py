"""One reconcile of one Model: read what the indexes saw, plan, apply what changed, fold status, post events.

Every trigger (the Model changed, a child changed, the rollout clock ticked) runs the same ``converge``, so the
outcome never depends on which event came first. Runs of the same Model are serialised by a lock; applies whose
object is unchanged since this process last applied it are skipped, which keeps a quiet cluster quiet; a run that
fails is run again after a backoff.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kubernetes
import pydantic

from crds.model import GPUQuota, Model, ModelSpec, ModelStatus
from operators import metrics as operator_metrics
from operators.model import builders, gpus, naming, promotion, validation, version_rollout
from operators.model import plan as plans
from operators.model import rollout as rollouts
from operators.model import status as statuses
from operators.model.config import Config
from operators.model.kube import Kube

log = logging.getLogger(__name__)

ENDPOINT_URLS_ANNOTATION = "aiplane.io/endpoint-urls"
PAUSE_ANNOTATION = "aiplane.io/rollout-paused"
ABORT_ANNOTATION = "aiplane.io/rollout-abort"
Key = tuple[str, str]
Analyzer = Callable[[Model, str, str], Awaitable[rollouts.Verdict]]
# What a reconcile reads when it starts: the Model as last seen, its Deployments, its stuck pods, its
# autoscalers' names, its namespace's GPU quotas; None: the Model is gone.
State = tuple[Mapping[str, Any], list["DeploymentSeen"], list[tuple[str, str]], list[str], list[gpus.QuotaSeen]]
EventPoster = Callable[[dict[str, Any], rollouts.Event], None]
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 60.0
SERVICE_APPLIES = 8
# Answers that say "not now" rather than "never": overload, timeouts, a restarting apiserver, a lost race.
TRANSIENT_STATUS = frozenset({0, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class DeploymentSeen:
    """What the deployment index keeps of a child Deployment (small: the index holds one per live version)."""

    name: str
    version: str
    generation: int
    observed_generation: int
    desired: int
    ready: int
    updated: int
    deadline_exceeded: bool
    # Why the ReplicaSet cannot create pods (a ResourceQuota, a LimitRange, admission), as the Deployment says.
    replica_failure: str | None = None
    # What its pods run (builders.served): a version rollout keeps the stable version as it is.
    served: tuple[str, str] | None = None


def deployment_seen(
    name: str, version: str, *, meta: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any]
) -> DeploymentSeen:
    conditions = status.get("conditions") or []
    return DeploymentSeen(
        name=name,
        version=version,
        generation=int(meta.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        desired=int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1),
        ready=int(status.get("readyReplicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        deadline_exceeded=any(
            c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded" for c in conditions
        ),
        replica_failure=next(
            (
                str(c.get("message") or "")
                for c in conditions
                if c.get("type") == "ReplicaFailure" and c.get("status") == "True"
            ),
            None,
        ),
        served=builders.served(spec),
    )


def observed_versions(
    deployments: Iterable[DeploymentSeen], unschedulable: Iterable[tuple[str, str]]
) -> dict[str, plans.Observed]:
    """Each version's Deployment as the plan reads it, with the scheduler's message when its pods wait."""
    pending: dict[str, str] = dict(unschedulable)
    return {
        d.version: plans.Observed(
            version=d.version,
            desired=d.desired,
            ready=d.ready,
            updated=d.updated,
            up_to_date=d.observed_generation >= d.generation,
            deadline_exceeded=d.deadline_exceeded,
            unschedulable=pending.get(d.version),
            replica_failure=d.replica_failure,
            served=d.served,
        )
        for d in deployments
    }


def unschedulable_message(status: Mapping[str, Any]) -> str | None:
    """The scheduler's reason a pod waits (``0/5 nodes are available: ...``), or None if it is not stuck."""
    for cond in status.get("conditions") or []:
        stuck = cond.get("status") == "False" and cond.get("reason") == "Unschedulable"
        if cond.get("type") == "PodScheduled" and stuck:
            return str(cond.get("message") or "no node fits the pod")
    return None


def control(annotations: Mapping[str, str]) -> rollouts.Control:
    if annotations.get(ABORT_ANNOTATION, "").lower() == "true":
        return "abort"
    if annotations.get(PAUSE_ANNOTATION, "").lower() == "true":
        return "pause"
    return "resume"


def endpoint_urls(
    model: Model, owner: builders.Owner, versions: Iterable[str], *, honour_annotation: bool = False
) -> dict[str, str]:
    """Service URLs, unless ``honour_annotation`` (``Config.endpoint_urls_annotation``, for tests, whose pods on
    simulated nodes run nothing) and the Model maps a version to another URL."""
    annotations = model.metadata.get("annotations") or {}
    overrides: dict[str, str] = {}
    raw = annotations.get(ENDPOINT_URLS_ANNOTATION)
    if raw and honour_annotation:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = {}
        if isinstance(parsed, dict):
            overrides = {str(k): str(v) for k, v in parsed.items()}
    return {v: overrides.get(v) or builders.service_url(model, owner, v) for v in versions}


def _digest(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@dataclass
class Reconciler:
    kube: Kube
    config: Config
    post_event: EventPoster
    analyzer: Analyzer | None = None
    # The engine's approvals, for canaries whose promotion needs one; None: this operator has no database.
    approvals: promotion.Approvals | None = None
    # What the Policies selecting a Model demand of its promotions; None: no Policy is consulted.
    demands: promotion.Demands | None = None
    # Whole seconds, as Kubernetes writes condition times.
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC).replace(microsecond=0))
    _locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    # Models with a reconcile waiting for the lock: it will read the newest state, so later triggers drop out.
    _pending: set[Key] = field(default_factory=set)
    # (namespace, name) -> digest of what this process last applied, and the generation it produced.
    _applied: dict[tuple[str, str, str], tuple[str, int]] = field(default_factory=dict)
    # Model uid -> the status this process last wrote: newer than any the watch may have delivered yet.
    _written: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Model uid -> resourceVersion of the Model after this process's last status write: its watch echo.
    _own_writes: dict[str, str] = field(default_factory=dict)
    # Models whose last run failed: how many times in a row, and the timer of the next try.
    _failures: dict[Key, int] = field(default_factory=dict)
    _retries: dict[Key, asyncio.TimerHandle] = field(default_factory=dict)
    _retrying: set[asyncio.Task[None]] = field(default_factory=set)
    # kube-apiserver allocates ClusterIPs one at a time (its allocator holds a lock across the IPAddress create),
    # so a burst of new Services only queues there, each holding one of the API threads for as long as it waits
    # (tens of seconds under a burst of Models, up to the apiserver's 60 s timeout), and the Deployments and
    # status writes of other Models wait for a thread behind them. A few at a time keeps the rest moving.
    _service_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(SERVICE_APPLIES))
    # (Model uid, annotation value) whose aiplane.io/endpoint-urls this process has said it ignores: once each.
    _ignored_urls: set[tuple[str, str]] = field(default_factory=set)

    def is_own_write(self, uid: str, body: Mapping[str, Any]) -> bool:
        """The Model as this process's last status write left it: nothing a reconcile reads has changed."""
        version = (body.get("metadata") or {}).get("resourceVersion")
        return version is not None and self._own_writes.get(uid) == version

    def forget(self, namespace: str, name: str, uid: str | None) -> None:
        operator_metrics.forget_model(namespace, name)
        self._locks.pop((namespace, name), None)
        self._pending.discard((namespace, name))
        self._failures.pop((namespace, name), None)
        retry = self._retries.pop((namespace, name), None)
        if retry is not None:
            retry.cancel()
        self._written.pop(uid or "", None)
        self._own_writes.pop(uid or "", None)
        self._ignored_urls = {k for k in self._ignored_urls if k[0] != uid}
        for key in [k for k in self._applied if k[0] == namespace and (k[2] == name or k[2].startswith(f"{name}-"))]:
            del self._applied[key]

    async def converge(self, key: Key, read: Callable[[], State | None]) -> None:
        """Reconcile the Model ``key`` from what ``read`` returns once this run's turn comes.

        A burst of triggers for one Model (its Deployment's status moves several times while pods start)
        becomes one run after the one in progress, not one run each: whoever waits reads the state then.
        """
        if key in self._pending:
            return
        self._pending.add(key)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            self._pending.discard(key)
            state = read()
            if state is None:
                return
            try:
                await self._converge(*state)
            except Exception as error:  # any failure is retried, with its reason in the log
                self._retry_later(key, read, error)
            else:
                self._failures.pop(key, None)

    def _retry_later(self, key: Key, read: Callable[[], State | None], error: Exception) -> None:
        """Run ``key`` again after a backoff that doubles per failure in a row (0.5 s up to a minute).

        The reconciler's own retries, not kopf's: a handler's failure would wait kopf's fixed backoff (a minute
        by default), and an apiserver that timed out one call under a burst is usually fine a second later.
        """
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(RETRY_FIRST_S * 2 ** (failures - 1), RETRY_MAX_S)
        transient = isinstance(error, kubernetes.client.ApiException) and (error.status or 0) in TRANSIENT_STATUS
        log.warning(
            "reconcile failed; retrying",
            exc_info=None if transient else error,
            extra={"model": "/".join(key), "error": f"{type(error).__name__}: {error}"[:500], "retry_in_s": delay},
        )
        old = self._retries.pop(key, None)
        if old is not None:
            old.cancel()

        def again() -> None:
            self._retries.pop(key, None)
            task = asyncio.ensure_future(self.converge(key, read))
            self._retrying.add(task)
            task.add_done_callback(self._retrying.discard)

        self._retries[key] = asyncio.get_running_loop().call_later(delay, again)

    async def _converge(
        self,
        body: Mapping[str, Any],
        deployments: list[DeploymentSeen],
        unschedulable: list[tuple[str, str]],
        autoscalers: list[str],
        quotas: list[gpus.QuotaSeen],
    ) -> None:
        meta = dict(body.get("metadata") or {})
        if meta.get("deletionTimestamp"):
            # Going away (a foreground deletion waits for the children): re-applying them would keep it here.
            return
        namespace, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
        generation = int(meta.get("generation") or 0)
        owner = builders.Owner(name=name, namespace=namespace, uid=uid)
        now = self.clock()
        raw_status = self._written.setdefault(uid, dict(body.get("status") or {})) or None
        try:
            status = ModelStatus.model_validate(raw_status) if raw_status else None
        except pydantic.ValidationError:
            status = None  # written by an older operator: start over rather than stop
        try:
            spec = ModelSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError as error:
            problems = [f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
            await self._write_status(namespace, name, uid, statuses.invalid(status, generation, problems, now))
            return
        model = Model(metadata=meta, spec=spec, status=status)
        problems = validation.problems(model, self.config.serving_image)
        if problems:
            await self._write_status(namespace, name, uid, statuses.invalid(model.status, generation, problems, now))
            return

        observed = observed_versions(deployments, unschedulable)
        # What the spec asks for, as the rollout machinery plans it: a new spec.version under spec.rollout is a
        # canary of the serving version. Status is folded against the spec as written.
        declared, model = model, version_rollout.as_canary(model, observed, self.config.serving_image or "")
        verdict = await self._analyse(model, status)
        wanted = await self._wanted(model, status)
        plan = plans.plan(
            model,
            model.spec.image or self.config.serving_image or "",
            observed,
            now=now,
            control=control(meta.get("annotations") or {}),
            verdict=verdict,
            gpu_room=await self._gpu_room(model),
            approval=await self._approval(wanted, status, now),
            approval_required=wanted is not None,
        )
        plan = await self._withdraw(status, plan)
        try:
            await self._apply_children(model, owner, plan, has_autoscaler=bool(autoscalers))
        except kubernetes.client.ApiException as error:
            if error.status == 403 and "being terminated" in (error.body or ""):
                return  # the namespace is going away with the Model in it: nothing to serve
            if error.status in (400, 422):
                reason = _api_message(error)
                log.warning("apiserver refused a child", extra={"model": f"{namespace}/{name}", "reason": reason})
                problem = f"the apiserver refused what this spec makes: {reason}"
                await self._write_status(
                    namespace, name, uid, statuses.invalid(model.status, generation, [problem], now)
                )
                return
            raise
        await self._delete_superseded(namespace, name, plan, deployments)
        urls = self._endpoint_urls(model, owner, plan.live)
        folded = statuses.fold(declared, generation=generation, plan=plan, observed=observed, urls=urls, now=now)
        folded = folded.model_copy(update={"gpu_quota": gpu_quota(model, folded, quotas)})
        await self._write_status(namespace, name, uid, folded)
        operator_metrics.model_reconciled(
            namespace,
            name,
            {e.version: e.weight for e in folded.endpoints or ()},
            canary=model.spec.canary is not None,
            event=plan.event.reason if plan.event is not None else None,
        )
        if plan.event is not None:
            self._announce(meta, plan.event)

    def _announce(self, meta: Mapping[str, Any], event: rollouts.Event) -> None:
        """A rollout's step, promotion or rollback: an Event on the Model, and a log line."""
        ref = {"apiVersion": f"{naming.GROUP}/{naming.VERSION}", "kind": "Model", "metadata": meta}
        self.post_event(ref, event)
        model = f"{meta.get('namespace')}/{meta.get('name')}"
        log.info("rollout", extra={"model": model, "reason": event.reason, "detail": event.message})

    def _endpoint_urls(self, model: Model, owner: builders.Owner, versions: Iterable[str]) -> dict[str, str]:
        honour = self.config.endpoint_urls_annotation
        if not honour:
            self._say_urls_ignored(model.metadata)
        return endpoint_urls(model, owner, versions, honour_annotation=honour)

    def _say_urls_ignored(self, meta: Mapping[str, Any]) -> None:
        """A Model asks for URLs of its own that this operator does not publish: say so where its owner looks
        (a Warning Event) and in the log, once per Model and annotation value."""
        raw = (meta.get("annotations") or {}).get(ENDPOINT_URLS_ANNOTATION)
        key = (str(meta.get("uid")), str(raw))
        if not raw or key in self._ignored_urls:
            return
        self._ignored_urls.add(key)
        message = (
            f"annotation {ENDPOINT_URLS_ANNOTATION} ignored: status.endpoints publishes the Services' URLs (the "
            "annotation is honoured only by an operator run with AIPLANE_ENDPOINT_URLS_ANNOTATION=true, for tests)"
        )
        model = f"{meta.get('namespace')}/{meta.get('name')}"
        log.warning("endpoint-urls annotation ignored", extra={"model": model, "detail": message})
        ref = {"apiVersion": f"{naming.GROUP}/{naming.VERSION}", "kind": "Model", "metadata": dict(meta)}
        self.post_event(ref, rollouts.Event("Warning", "EndpointURLsIgnored", message))

    async def _gpu_room(self, model: Model) -> gpus.Room | None:
        """The GPUs free to a rollout of a GPU model; None when none runs (only then are they counted)."""
        if not _gpu_rollout(model):
            return None
        gpu = model.spec.resources.gpu
        gpu_type = gpu.type if gpu is not None else None
        return await asyncio.to_thread(self.kube.gpu_room, str(model.metadata.get("namespace")), gpu_type)

    async def _analyse(self, model: Model, status: ModelStatus | None) -> rollouts.Verdict | None:
        canary = model.spec.canary
        rollout = status.rollout if status is not None else None
        if canary is None or rollout is None or rollout.version != canary.version:
            return None
        if rollout.phase not in ("Progressing", "AwaitingApproval") or rollout.step < 0:
            return None
        if self.analyzer is None:
            return rollouts.Verdict(True, detail="no analysis configured (AIPLANE_PROMETHEUS_URL is unset)")
        stable = status.stable_version if status is not None and status.stable_version else model.spec.version
        return await self.analyzer(model, stable, canary.version)

    async def _wanted(self, model: Model, status: ModelStatus | None) -> promotion.Request | None:
        """The approval the promotion of the running canary needs, from the spec and the Policies; None: none."""
        canary = model.spec.canary
        if canary is None:
            return None
        stable = status.stable_version if status is not None and status.stable_version else model.spec.version
        demand = None
        if self.demands is not None:
            # In memory (the Policies a watch keeps, compiled CEL): no thread hop needed.
            demand = self.demands(model, canary.version, stable)
        return promotion.request(model, stable, demand)

    async def _approval(
        self, wanted: promotion.Request | None, status: ModelStatus | None, now: datetime
    ) -> promotion.Seen | None:
        """The approval a rollout awaiting one waits for: opened on the first look (idempotently, so a restart
        between opening it and writing status finds the same one), then read by its id from status."""
        rollout = status.rollout if status is not None else None
        if wanted is None or rollout is None or rollout.version != wanted.version:
            return None
        if rollout.phase != "AwaitingApproval":
            return None
        if not wanted.roles and not wanted.users:
            rules = f"approval rules {', '.join(wanted.rules)} and " if wanted.rules else ""
            return f"{rules}spec.canary.promotion.approval share no role: nobody could approve; fix one of them"
        if self.approvals is None:
            return "this operator has no approvals store (set AIPLANE_DATABASE_URL to the engine's database)"
        approvals = self.approvals
        known = rollout.approval
        try:
            if known is not None and known.state == "pending":
                seen = await asyncio.to_thread(approvals.look, known.tenant, known.id)
            elif known is not None and known.state == "approved":
                seen = known
            else:
                seen = await asyncio.to_thread(approvals.open, wanted)
        except Exception as error:  # the store is down or refused: say so and ask again on the next tick
            log.warning(
                "cannot reach the approvals store",
                extra={"model": f"{wanted.namespace}/{wanted.name}", "error": f"{type(error).__name__}: {error}"},
            )
            return f"the approvals store failed: {type(error).__name__}: {error}"[:1000]
        return promotion.effective(seen, now)

    async def _withdraw(self, status: ModelStatus | None, plan: plans.Plan) -> plans.Plan:
        """A rollout that stopped waiting otherwise (an analysis rollback, an abort, another canary version, no
        canary any more, nothing asking for the approval) cancels its pending approval, so approvers are not left
        deciding what no longer waits; status then holds the approval as it ended, so this happens once."""
        before = status.rollout if status is not None else None
        if self.approvals is None or before is None or before.approval is None or before.approval.state != "pending":
            return plan
        after = plan.rollout
        ours = after is not None and after.version == before.version
        if ours and after is not None:
            if after.approval is not None and after.approval.state != "pending":
                return plan  # decided or expired: nothing to withdraw
            waiting = plan.canary is not None and plan.canary.version == before.version
            if waiting and after.phase in ("Progressing", "Paused", "AwaitingApproval"):
                return plan  # still waiting, or will wait again after a pause
        try:
            ended = await asyncio.to_thread(self.approvals.withdraw, before.approval, after.message if after else "")
        except Exception:  # the approval expires by itself; failing the reconcile would undo nothing
            log.warning("could not cancel a promotion approval", exc_info=True, extra={"approval": before.approval.id})
            return plan
        if not ours or after is None:
            return plan  # the status no longer shows that rollout's approval
        return dataclasses.replace(plan, rollout=after.model_copy(update={"approval": ended}))

    async def _apply_children(
        self, model: Model, owner: builders.Owner, plan: plans.Plan, *, has_autoscaler: bool
    ) -> None:
        wanted: list[dict[str, Any]] = []
        for live in (plan.stable, plan.canary):
            if live is None:
                continue
            wanted.append(builders.deployment(model, owner, live))
            wanted.append(builders.service(model, owner, live.version))
            wanted.append(builders.pod_disruption_budget(owner, live.version))
        hpa = builders.horizontal_pod_autoscaler(model, owner, plan.stable.version) if plan.autoscale else None
        if hpa is not None:
            wanted.append(hpa)
        elif has_autoscaler:
            # Only when the index saw one: a DELETE of nothing would cost every fixed-size Model a call.
            await asyncio.to_thread(self.kube.delete, "HorizontalPodAutoscaler", owner.namespace, owner.name)
            self._applied.pop((owner.namespace, "HorizontalPodAutoscaler", owner.name), None)
        changed = [obj for obj in wanted if self._applied.get(_ident(obj), ("", 0))[0] != _digest(obj)]
        if not changed:
            return

        async def apply(obj: dict[str, Any]) -> None:
            if obj["kind"] == "Service":
                async with self._service_slots:
                    stored = await asyncio.to_thread(self.kube.apply, obj)
            else:
                stored = await asyncio.to_thread(self.kube.apply, obj)
            # Each as it lands: a retry after a sibling failed re-applies only what is still missing.
            self._applied[_ident(obj)] = (_digest(obj), int(stored.get("metadata", {}).get("generation") or 0))

        results = await asyncio.gather(*(apply(obj) for obj in changed), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        log.info(
            "applied",
            extra={
                "model": f"{owner.namespace}/{owner.name}",
                "objects": [f"{obj['kind']}/{obj['metadata']['name']}" for obj in changed],
            },
        )

    def invalidate(self, namespace: str, kind: str, name: str, generation: int | None) -> None:
        """A child changed under us (someone edited it, the HPA scaled it, or it was deleted: ``generation``
        None): apply it again next time, unless the change was the one this process made."""
        known = self._applied.get((namespace, kind, name))
        if known is not None and (generation is None or known[1] != generation):
            del self._applied[(namespace, kind, name)]

    async def _delete_superseded(
        self, namespace: str, name: str, plan: plans.Plan, deployments: list[DeploymentSeen]
    ) -> None:
        for seen in deployments:
            if seen.version in plan.live:
                continue
            # The Service and budget first: a crash after them leaves the Deployment, which the next run sees
            # and finishes; the other order could leave a Service nothing would look for.
            for kind in ("Service", "PodDisruptionBudget", "Deployment"):
                await asyncio.to_thread(self.kube.delete, kind, namespace, seen.name)
                self._applied.pop((namespace, kind, seen.name), None)
            log.info("removed superseded version", extra={"model": f"{namespace}/{name}", "version": seen.version})

    async def _write_status(self, namespace: str, name: str, uid: str, status: ModelStatus) -> None:
        body = statuses.to_patch(status)
        if self._written.get(uid) == body:
            return
        self._own_writes[uid] = await asyncio.to_thread(self.kube.patch_status, namespace, name, body)
        self._written[uid] = body


def gpu_quota(model: Model, status: ModelStatus, quotas: list[gpus.QuotaSeen]) -> GPUQuota | None:
    """The namespace's tightest GPU quota next to what this Model asks for; None for a Model without GPUs or a
    namespace without a GPU quota."""
    gpu = model.spec.resources.gpu
    quota = gpus.tightest(quotas)
    if gpu is None or gpu.count == 0 or quota is None:
        return None
    requested = sum(r.desired for r in status.replicas) * gpu.count
    return GPUQuota(quota=quota.name, hard=quota.hard, used=quota.used, requested=requested)


def _gpu_rollout(model: Model) -> bool:
    """A rollout of a GPU model is running (or about to start): the only time free GPUs are counted."""
    spec, status = model.spec, model.status
    gpu = spec.resources.gpu
    if spec.canary is None or gpu is None or gpu.count == 0:
        return False
    rollout = status.rollout if status is not None else None
    return rollout is None or rollout.version != spec.canary.version or rollout.phase in rollouts.ACTIVE_PHASES


def _ident(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    return (obj["metadata"]["namespace"], obj["kind"], obj["metadata"]["name"])


def _api_message(error: kubernetes.client.ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except (json.JSONDecodeError, AttributeError):
        return str(error.reason)
