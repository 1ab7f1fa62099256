"""What the Policies that select a Model say about a call to it that no workflow governs: a prediction through
``POST /v1/models/{name}/predict``, where the Model is the only resource a Policy can select.

A Policy whose ``selector.kinds`` names Model governs such a call as it governs a task of a Workflow it selects:

- ``access.tenants``: a tenant every tenant-listing Policy allows may call the Model; any other is refused (deny
  wins), naming the Policies that left it out (for the audit record, not for the caller);
- ``residency.regions``: the Model is called only while its region (``spec.region``) is among them (a Model
  that declares none is refused, as to a pinned task);
- ``pii``: what the gateway keeps or sends of the call (payload logs, span error texts) is masked by the Model's
  combined ``pii``; the caller's answer is the model's own;
- ``payloadLogging.sampleRate``: the share of calls whose request and answer are logged, masked.

The engine's model steps ask the same decision before each call (``ModelCall.refusal``, with the Model's region):
a refused call fails the step, not retried, with a ``TenantDenied`` or ``ResidencyDenied`` error naming the
Policies, and the model is not called.

``ModelPolicies.call(model, tenant)`` answers from a cache that holds one ``ModelCall`` per (model, tenant) and is
emptied when the PolicySet changes (its ``revision``) or when the Model's labels do (the target is compared), so
a call costs a revision check, the target and one dictionary lookup.
"""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from policies.effective import DEFAULT_NAMESPACE, EffectivePII, Target, applicable, ref
from policies.masking import WorkflowMasking
from policies.sources import PolicySet
from policies.tokens import MaskingKeys

TargetOf = Callable[[str], Target]

#: The step error kind of a model step whose Model's Policies refuse the task's tenant (a residency refusal's kind
#: is ``policies.residency.DENIED``).
TENANT_DENIED = "TenantDenied"


def default_target(model: str) -> Target:
    """A Model known by name only: unlabelled, in the namespace ``default`` (manifests without one)."""
    return Target("Model", model, DEFAULT_NAMESPACE, {})


@dataclass(frozen=True)
class Refusal:
    """A call the Model's Policies refuse: ``reason`` (the problem type and audit reason), why, and the versions
    of the Policies that decided it (``namespace/name@version``)."""

    reason: Literal["tenant-denied", "residency-denied"]
    detail: str
    policies: tuple[str, ...]


@dataclass(frozen=True)
class ModelCall:
    """What the Policies selecting ``model`` decide for a call of ``tenant``."""

    model: str
    tenant: str
    target: Target
    #: Why the tenant may not call the Model (the problem's detail); None: it may.
    denial: str | None = None
    #: The Policy versions that refused the tenant (``namespace/name@generation``), for the audit record.
    denied_by: tuple[str, ...] = ()
    #: The Policy versions with a residency part that select the Model, named by a residency refusal's record.
    residency_policies: tuple[str, ...] = ()
    pii: EffectivePII | None = None
    sample_rate: float | None = None
    #: The regions the Model's residency Policies let its data go to (their intersection); None: not pinned.
    regions: frozenset[str] | None = None
    #: Every Policy version that selects the Model (``namespace/name@generation``), named by the coalesced allow
    #: records of its calls (``api.admitted``); empty: no Policy governs the call, nothing is recorded.
    policies: tuple[str, ...] = ()

    def residency_violation(self, region: str | None) -> str | None:
        """Why the Model, in ``region`` (None: it declares none), may not be called under its residency Policies;
        None when it may."""
        if self.regions is None or (region is not None and region in self.regions):
            return None
        allowed = ", ".join(sorted(self.regions)) or "none (its residency policies' regions do not overlap)"
        where = f"is in {region!r}" if region is not None else "declares no region (set spec.region on the Model)"
        return f"model {self.model!r} keeps its data in {allowed} by its Policies, but it {where}; it is not called"

    def refusal(self, region: str | None) -> Refusal | None:
        """Why the Model's Policies refuse this call (the tenant first: deny wins), the Model being in ``region``
        (None: it declares none); None when they allow it. What the gateway's predict route and the engine's
        model steps both ask."""
        if self.denial is not None:
            return Refusal("tenant-denied", self.denial, self.denied_by)
        if (why := self.residency_violation(region)) is not None:
            return Refusal("residency-denied", why, self.residency_policies)
        return None

    def sampled(self, rng: random.Random) -> bool:
        """Whether this call's request and answer go to the payload log (a call has no task id to hash)."""
        return bool(self.sample_rate) and rng.random() < (self.sample_rate or 0.0)


class ModelPolicies:
    """The Policies of ``policies`` that select Models, as calls to a Model ask them. ``target_of(model)`` gives a
    Model's namespace and labels as selection sees them (the Model watch in a cluster, the manifests in ``aiplane
    dev``); ``keys`` are the PII keys for hash and tokenize (without them those mask by redaction)."""

    def __init__(self, policies: PolicySet, target_of: TargetOf = default_target, keys: MaskingKeys | None = None):
        self.policies = policies
        self.target_of = target_of
        self._lock = threading.Lock()
        self._revision = -1
        self._cache: dict[tuple[str, str], ModelCall] = {}
        #: Masks a Model's payloads and texts by its combined ``pii`` (the Model's name where a workflow's goes).
        self.masking = WorkflowMasking(self.pii, keys)

    def pii(self, model: str) -> EffectivePII | None:
        return self.policies.effective(self.target_of(model)).pii

    def sample_rate(self, model: str) -> float | None:
        """The Model's payload logging rate (None: not logged)."""
        return self.policies.effective(self.target_of(model)).payload_sample_rate

    def text_mask(self, call: ModelCall) -> Callable[[str], str] | None:
        """Masks a free text of ``call`` (an error quoting the model's answer) by the Model's ``pii``; None when
        no Policy masks the Model's data."""
        if call.pii is None:
            return None
        return functools.partial(self.masking.text, call.tenant, call.model)

    def call(self, model: str, tenant: str) -> ModelCall:
        target = self.target_of(model)
        revision = self.policies.revision
        if revision != self._revision:
            with self._lock:
                if revision != self._revision:
                    self._cache = {}
                    self._revision = revision
        found = self._cache.get((model, tenant))
        if found is not None and (found.target is target or found.target == target):
            return found
        decided = self._decide(model, tenant, target)
        if revision == self.policies.revision:  # not computed from Policies that changed meanwhile
            self._cache[(model, tenant)] = decided
        return decided

    def _decide(self, model: str, tenant: str, target: Target) -> ModelCall:
        governing = applicable(self.policies.policies(), target)
        effective = self.policies.effective(target)
        denial = None
        denied_by: tuple[str, ...] = ()
        if not effective.allows_tenant(tenant).allowed:
            denial = (
                f"tenant {tenant!r} may not call model {model!r}: its Policies' access.tenants do not name this "
                "tenant; ask the model's owners to add it"
            )
            # Deny wins: each Policy that lists tenants without this one refuses it on its own.
            denied_by = tuple(
                sorted(
                    str(ref(p))
                    for p in governing
                    if p.spec.access is not None and p.spec.access.tenants and tenant not in p.spec.access.tenants
                )
            )
        return ModelCall(
            model=model,
            tenant=tenant,
            target=target,
            denial=denial,
            denied_by=denied_by,
            residency_policies=tuple(sorted(str(ref(p)) for p in governing if p.spec.residency is not None)),
            pii=effective.pii,
            sample_rate=effective.payload_sample_rate,
            regions=effective.regions,
            policies=tuple(sorted({str(ref(p)) for p in governing})),
        )
