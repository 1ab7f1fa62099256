"""Whether a submission may become a task at all: the Policy decisions taken once, at intake, for every way a task
comes in (the gateway's ``POST /v1/tasks``, a Kafka source's messages, ``Engine.submit`` in code).

- Tenant access: every Policy of the workflow that lists ``access.tenants`` must name the task's tenant (deny wins);
- Residency: no model or connector step of the workflow may sit outside the regions the workflow is pinned to
  (refused before the task exists rather than half-way; the engine checks again before each call).

The engine's intake asks ``Admission.check`` before the input is checked or anything written, so a denied tenant
learns nothing about the workflow's input schema. Rate limits are not here: a gateway answers 429 before reading
the body, and a Kafka source slows down instead of refusing (``policies.ratelimit``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from crds.policy import Policy
from crds.workflow import WorkflowSpec
from policies import metrics
from policies.audit import Entry
from policies.effective import ref
from policies.residency import Residency

Reason = Literal["tenant-denied", "residency-denied"]
TENANT_DENIED: Reason = "tenant-denied"
RESIDENCY_DENIED: Reason = "residency-denied"


@dataclass(frozen=True)
class Denial:
    """Why a submission is refused: ``reason`` is the problem type and dead-letter reason, ``detail`` what to fix."""

    reason: Reason
    detail: str
    #: Facts for the problem document (``allowed_regions``, ``allowed_tenants``).
    fields: dict[str, str] = field(default_factory=dict)
    #: The Policy versions that decided (``namespace/name@generation``), for the audit record: not for the caller,
    #: who learns what to fix from ``detail`` without learning how the namespace's Policies are named.
    policies: tuple[str, ...] = ()


def _no_region(name: str) -> str | None:
    return None


@dataclass
class Admission:
    """``tenants``: a workflow's allowed tenants (None: any), as ``EffectivePolicy.tenants`` says; ``residency``:
    the workflow's pins and the Models' regions; ``connector_region``: a Connector's ``spec.region`` by name;
    ``governing``: the Policies that govern a workflow (by name), asked on a denial only, to name the versions that
    decided it."""

    tenants: Callable[[str], frozenset[str] | None] | None = None
    residency: Residency | None = None
    connector_region: Callable[[str], str | None] = _no_region
    governing: Callable[[str], Sequence[Policy]] | None = None

    def _deciding(self, workflow: str, decided: Callable[[Policy], bool]) -> tuple[str, ...]:
        if self.governing is None:
            return ()
        return tuple(sorted(str(ref(policy)) for policy in self.governing(workflow) if decided(policy)))

    def check(self, tenant: str, workflow: str, spec: WorkflowSpec, region: str | None = None) -> Denial | None:
        """Why the Policies refuse a task of ``tenant`` and ``workflow`` (``region``: the task's own region, which
        narrows where its steps may send data); None when they admit it."""
        if self.tenants is not None:
            allowed = self.tenants(workflow)
            if allowed is not None and tenant not in allowed:
                metrics.denied("access")
                return Denial(
                    TENANT_DENIED,
                    f"tenant {tenant!r} may not run workflow {workflow!r}: its Policies' access.tenants do not "
                    "name this tenant; ask the workflow's owners to add it",
                    {"tenant": tenant, "workflow": workflow},
                    # Deny wins: each Policy that lists tenants without this one refuses it on its own.
                    self._deciding(
                        workflow,
                        lambda p: (
                            p.spec.access is not None
                            and bool(p.spec.access.tenants)
                            and tenant not in p.spec.access.tenants
                        ),
                    ),
                )
        if self.residency is not None:
            violations = self.residency.plan_violations(tenant, workflow, spec, self.connector_region, region)
            if violations:
                metrics.denied("residency")
                return Denial(
                    RESIDENCY_DENIED,
                    "; ".join(violations),
                    {
                        "workflow": workflow,
                        "allowed_regions": ", ".join(sorted(self.residency.pinned(tenant, workflow) or ())),
                        # A regional install's own region, which its tasks' data stays in.
                        **({"region": self.residency.home} if self.residency.home else {}),
                    },
                    # The pin is the intersection of every residency Policy's regions: they decide together.
                    self._deciding(workflow, lambda p: p.spec.residency is not None),
                )
        return None


@dataclass(frozen=True)
class Governance:
    """The Policies that governed an admitted submission, for its ``policy``/``allow`` audit record: their versions
    (``namespace/name@generation``) and the intake checks they set that it passed (``access``: a tenant list;
    ``residency``: regions). Made only when at least one Policy governs the workflow: no Policy, no record."""

    policies: tuple[str, ...]
    checks: tuple[str, ...] = ()

    @classmethod
    def of(cls, governing: Sequence[Policy], *, tenants: bool = True, residency: bool = True) -> Governance | None:
        """``governing``'s versions; ``tenants``/``residency``: whether intake checks those parts at all (an engine
        given no tenant access or residency does not, whatever the Policies say). None when no Policy governs."""
        if not governing:
            return None
        checks = []
        if tenants and any(p.spec.access is not None and p.spec.access.tenants for p in governing):
            checks.append("access")
        if residency and any(p.spec.residency is not None for p in governing):
            checks.append("residency")
        return cls(tuple(sorted({str(ref(p)) for p in governing})), tuple(checks))

    def allow_entry(
        self, task_id: str, *, tenant: str, workflow: str, version: str, by: str | None, actor: str = "engine"
    ) -> Entry:
        """The record of a task admitted under these Policies: kind ``policy``, decision ``allow``, subject
        ``task/<id>``, as a denial's record on ``workflow/<name>/submission`` is shaped (never the input)."""
        details = {
            "workflow": workflow,
            "version": version,
            "by": by,
            "checks": list(self.checks),
            "policies": list(self.policies),
        }
        return Entry("policy", f"task/{task_id}", "allow", details, tenant=tenant, actor=actor)
