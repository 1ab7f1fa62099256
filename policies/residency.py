"""Data residency: a task whose workflow a Residency Policy pins to regions never reaches a model or connector
outside them.

A Policy with ``residency.regions`` pins the Workflows it selects (``selector.kinds`` names Workflow, the labels
match, same namespace); several pins intersect (deny wins), and an empty intersection allows no region at all.
A Model's region is ``spec.region``, a Connector's ``spec.region``. A system without a region is refused to a
pinned task: where its data would go is not known, so it cannot be shown to stay in place.

``Residency.check`` is what the engine's model and connector steps ask right before calling out; a refusal is a
sentence that says which task, which system, which region and which regions were allowed (the step error's
message, not retried: the answer does not change by trying again).

A regional install (the chart's ``region``, ``AIPLANE_REGION``: one release and one store per region) is
``Residency.home``. Its store keeps every task it takes, so the store is where a task's region is written: a task
of a workflow pinned elsewhere is refused at intake (storing its input here would already move its data), and no
task calls a model or connector that declares another region. Systems that declare no region stay callable for
unpinned workflows, as without a home (pinned ones refuse them already).

A task may carry a region of its own (``region`` in ``POST /v1/tasks``): its data stays in that one region. It can
only narrow what its workflow allows, never widen it: a region outside the workflow's pinned regions (or, on a
regional install, other than its home) is refused at submission (``region_violation``, a 422 naming the allowed
regions), and at call time the task's region is checked after the workflow's pin, so a model or connector must be
in both (a system that declares no region is refused, as to a pinned workflow). A task without a region is governed
by its workflow's pin alone; tasks of Kafka sources have none (they take their workflow's pin).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from crds.policy import Policy
from crds.workflow import WorkflowSpec
from policies.effective import Target
from policies.sources import PolicySet

DENIED = "ResidencyDenied"  # the step error kind of a refused call
Kind = Literal["model", "connector"]
DEFAULT_NAMESPACE = "default"


def violation(pinned: frozenset[str] | None, kind: Kind, name: str, region: str | None, *, workflow: str) -> str | None:
    """Why a task of ``workflow`` pinned to ``pinned`` may not call ``kind`` ``name`` in ``region``; None if it may.
    ``pinned`` None: no pin, anything goes."""
    if pinned is None:
        return None
    allowed = ", ".join(sorted(pinned)) or "none (its residency policies' regions do not overlap)"
    if region is None:
        return (
            f"workflow {workflow!r} keeps its data in {allowed}, but {kind} {name!r} declares no region; set "
            f"spec.region on the {kind.capitalize()} or call one in an allowed region"
        )
    if region not in pinned:
        return (
            f"workflow {workflow!r} keeps its data in {allowed}; {kind} {name!r} is in {region!r}, so it is not "
            "called (data residency)"
        )
    return None


def task_violation(task_region: str, kind: Kind, name: str, region: str | None) -> str | None:
    """Why a task pinned to ``task_region`` may not call ``kind`` ``name`` in ``region``; None if it may."""
    if region is None:
        return (
            f"this task's data stays in {task_region!r} (the task's region), but {kind} {name!r} declares no region; "
            f"set spec.region on the {kind.capitalize()} or call one in {task_region!r}"
        )
    if region != task_region:
        return (
            f"this task's data stays in {task_region!r} (the task's region); {kind} {name!r} is in {region!r}, so it "
            "is not called (data residency)"
        )
    return None


def selects(policy: Policy, kind: str, namespace: str, labels: Mapping[str, str]) -> bool:
    """Whether ``policy`` governs a resource of ``kind`` in ``namespace`` with ``labels``."""
    selector = policy.spec.selector
    return (
        kind in selector.kinds
        and (policy.metadata.get("namespace") or DEFAULT_NAMESPACE) == namespace
        and all(labels.get(k) == v for k, v in selector.match_labels.items())
    )


def pinned_regions(
    policies: Iterable[Policy], workflow_namespace: str, workflow_labels: Mapping[str, str]
) -> frozenset[str] | None:
    """The regions a workflow's data may go to: the intersection of its residency Policies' regions, or None."""
    pins = [
        frozenset(p.spec.residency.regions)
        for p in policies
        if p.spec.residency is not None and selects(p, "Workflow", workflow_namespace, workflow_labels)
    ]
    return frozenset.intersection(*pins) if pins else None


@dataclass
class Residency:
    """What the engine asks before a model or connector call.

    ``pins``: workflow name to its allowed regions (absent: not pinned), or a function of (tenant, workflow) for a
    live policy source. ``model_regions``: Model name to ``spec.region``. Connector regions come with the
    connector's spec, so the executor passes them in.
    """

    pins: Mapping[str, frozenset[str]] | Callable[[str, str], frozenset[str] | None] = field(default_factory=dict)
    model_regions: Mapping[str, str | None] = field(default_factory=dict)
    #: The region this install serves (``AIPLANE_REGION``); None: not a regional install.
    home: str | None = None

    def pinned(self, tenant: str, workflow: str) -> frozenset[str] | None:
        if callable(self.pins):
            return self.pins(tenant, workflow)
        return self.pins.get(workflow)

    def check(
        self,
        tenant: str,
        workflow: str,
        kind: Kind,
        name: str,
        region: str | None = None,
        *,
        task_region: str | None = None,
    ) -> str | None:
        """None when the call may go ahead; otherwise why not. A model's region is looked up by name;
        ``task_region``: the task's own region (None: it has none), which narrows the workflow's pin."""
        pinned = self.pinned(tenant, workflow)
        if kind == "model":
            region = self.model_regions.get(name)
        if pinned is not None and (why := violation(pinned, kind, name, region, workflow=workflow)) is not None:
            return why
        if task_region is not None and (why := task_violation(task_region, kind, name, region)) is not None:
            return why
        return self.outside_home(kind, name, region)

    def region_violation(self, tenant: str, workflow: str, region: str) -> tuple[str, frozenset[str]] | None:
        """Why a task of ``workflow`` may not be pinned to ``region`` (it would widen what its workflow's
        residency Policies or this install's region allow), with the regions it may take; None when it may."""
        pinned = self.pinned(tenant, workflow)
        if pinned is not None and region not in pinned:
            allowed = ", ".join(sorted(pinned)) or "none (its residency policies' regions do not overlap)"
            return (
                f"region {region!r} is outside the regions workflow {workflow!r} keeps its data in ({allowed}): a "
                "task's region may narrow its workflow's regions, never widen them; give one of them, or none",
                pinned,
            )
        if self.home is not None and region != self.home:
            return (
                f"this aiplane serves region {self.home!r} and stores its tasks there; a task whose data stays in "
                f"{region!r} is submitted to a gateway of region {region!r}",
                frozenset({self.home}),
            )
        return None

    def outside_home(self, kind: Kind, name: str, region: str | None = None) -> str | None:
        """Why a regional install may not send data to ``kind`` ``name`` (a model's region looked up by name),
        whatever the workflow: it declares another region. None when it may."""
        if kind == "model":
            region = self.model_regions.get(name)
        if self.home is None or region is None or region == self.home:
            return None
        return (
            f"this aiplane serves region {self.home!r} and keeps its data there; {kind} {name!r} is in {region!r}, "
            f"so it is not called (data residency): call one in {self.home!r}, or go through region {region!r}'s "
            "gateway"
        )

    def intake_violation(self, tenant: str, workflow: str) -> str | None:
        """Why this install may not take a task of ``workflow`` at all: it is pinned to regions without ``home``,
        and the store the task would be written into is here."""
        pinned = self.pinned(tenant, workflow)
        if self.home is None or pinned is None or self.home in pinned:
            return None
        allowed = ", ".join(sorted(pinned)) or "none (its residency policies' regions do not overlap)"
        return (
            f"workflow {workflow!r} keeps its data in {allowed}; this aiplane serves region {self.home!r} and would "
            "store the task here: submit it to a gateway of an allowed region"
        )

    def plan_violations(
        self,
        tenant: str,
        workflow: str,
        spec: WorkflowSpec,
        connector_region: Callable[[str], str | None],
        task_region: str | None = None,
    ) -> list[str]:
        """Every model or connector step (and agent planner) of ``spec`` that residency would refuse
        (``step: why``), so that a submission can be refused before the task exists rather than fail half-way;
        ``task_region``: the submitted task's own region."""
        if self.pinned(tenant, workflow) is None and self.home is None and task_region is None:
            return []
        if (why := self.intake_violation(tenant, workflow)) is not None:
            return [why]
        out = []
        for step in spec.steps:
            if step.model is not None:
                why = self.check(tenant, workflow, "model", step.model.name, task_region=task_region)
            elif step.agent is not None:
                # The planner sees the task's data at every proposal; the actions are checked one by one when the
                # planner proposes them (a refused action is told to the planner, not a refused task).
                why = self.check(tenant, workflow, "model", step.agent.planner.model, task_region=task_region)
            elif step.connector is not None:
                region = connector_region(step.connector.name)
                why = self.check(tenant, workflow, "connector", step.connector.name, region, task_region=task_region)
            else:
                continue
            if why is not None:
                out.append(f"step {step.name!r}: {why}")
        return out

    @classmethod
    def from_policy_set(
        cls,
        policies: PolicySet,
        workflows: Mapping[str, Target],
        model_regions: Mapping[str, str | None],
        home: str | None = None,
    ) -> Residency:
        """Pins that follow ``policies`` as they change (each call asks the set's cached effective policy of the
        workflow); ``workflows`` maps a workflow name to its selection target (namespace and labels)."""

        def pins(tenant: str, workflow: str) -> frozenset[str] | None:
            target = workflows.get(workflow)
            return policies.effective(target).regions if target is not None else None

        return cls(pins=pins, model_regions=dict(model_regions), home=home)

    @classmethod
    def from_manifests(
        cls,
        policies: Iterable[Policy],
        workflows: Mapping[str, tuple[str, Mapping[str, str]]],
        model_regions: Mapping[str, str | None],
        home: str | None = None,
    ) -> Residency:
        """From Policies, workflows (name to (namespace, labels)) and the Models' regions, as read from manifests
        or the cluster; ``home``: the region of a regional install."""
        policies = list(policies)
        pins = {}
        for name, (namespace, labels) in workflows.items():
            pinned = pinned_regions(policies, namespace, labels)
            if pinned is not None:
                pins[name] = pinned
        return cls(pins=pins, model_regions=dict(model_regions), home=home)
