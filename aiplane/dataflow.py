"""``aiplane dataflow``: which workflows send which data classes to which systems and regions, for auditors.

Read from manifests (files or folders) or from the cluster (every namespace the kubeconfig may list). Per
Workflow: its data classes (the ``aiplane.io/data-class`` label and the PII kinds its Policies detect), the regions
its Residency Policies pin it to, and each model and connector step with the system it reaches (Model, or the
Connector's URL host, topic or database), that system's region, and whether residency allows the call. Kafka
sources are listed as where a workflow's data comes from. The exit status is 1 when any flow breaks residency, so
the report can gate a pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from crds import Resource
from crds.connector import Connector
from crds.model import Model
from crds.policy import Policy
from crds.workflow import Step, Workflow
from policies.residency import DEFAULT_NAMESPACE, pinned_regions, selects, violation

DATA_CLASS_LABEL = "aiplane.io/data-class"


@dataclass(frozen=True)
class Flow:
    """One step's data leaving a workflow for a system."""

    step: str
    kind: str  # model | connector
    name: str
    system: str  # what it reaches: a Model, an HTTP host, a Kafka topic, a database
    region: str | None
    allowed: bool
    reason: str | None = None


@dataclass(frozen=True)
class WorkflowFlows:
    namespace: str
    workflow: str
    data_classes: list[str]
    pinned_regions: list[str] | None
    sources: list[str] = field(default_factory=list)
    flows: list[Flow] = field(default_factory=list)


def _namespace(resource: Resource) -> str:
    return str(resource.metadata.get("namespace") or DEFAULT_NAMESPACE)


def _labels(resource: Resource) -> dict[str, str]:
    labels = resource.metadata.get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def _system(connector: Connector | None) -> str:
    if connector is None:
        return "unknown connector"
    spec = connector.spec
    if spec.http is not None:
        return f"http {urlsplit(spec.http.url.replace('{', '').replace('}', '')).hostname or spec.http.url}"
    if spec.kafka_sink is not None:
        return f"kafka topic {spec.kafka_sink.topic}"
    if spec.postgres is not None:
        return "postgres"
    return spec.type


def _calls(step: Step) -> list[tuple[str, Literal["model", "connector"], str]]:
    """(label, kind, name) of every model and connector a step may send the task's data to: an agent step's
    planner and each action that calls one (the engine checks each action again before it runs)."""
    if step.model is not None:
        return [(step.name, "model", step.model.name)]
    if step.connector is not None:
        return [(step.name, "connector", step.connector.name)]
    if step.agent is None:
        return []
    calls: list[tuple[str, Literal["model", "connector"], str]] = [
        (f"{step.name} (planner)", "model", step.agent.planner.model)
    ]
    for action in step.agent.actions:
        if action.model is not None:
            calls.append((f"{step.name} action {action.name}", "model", action.model.name))
        elif action.connector is not None:
            calls.append((f"{step.name} action {action.name}", "connector", action.connector.name))
    return calls


def report(resources: Iterable[Resource]) -> list[WorkflowFlows]:
    """The data flows of every Workflow among ``resources``, sorted by namespace and name."""
    resources = list(resources)
    policies = [r for r in resources if isinstance(r, Policy)]
    models = {(_namespace(r), r.metadata.get("name")): r for r in resources if isinstance(r, Model)}
    connectors = {(_namespace(r), r.metadata.get("name")): r for r in resources if isinstance(r, Connector)}
    out = []
    for workflow in sorted(
        (r for r in resources if isinstance(r, Workflow)), key=lambda w: (_namespace(w), str(w.metadata.get("name")))
    ):
        namespace, name, labels = _namespace(workflow), str(workflow.metadata.get("name")), _labels(workflow)
        governing = [p for p in policies if selects(p, "Workflow", namespace, labels)]
        classes = set()
        if DATA_CLASS_LABEL in labels:
            classes.add(labels[DATA_CLASS_LABEL])
        for policy in governing:
            if policy.spec.pii is not None:
                classes.update(f"pii:{entity}" for entity in policy.spec.pii.entities)
        pinned = pinned_regions(policies, namespace, labels)
        flows = []
        for step in workflow.spec.steps:
            for label, kind, target in _calls(step):
                if kind == "model":
                    model = models.get((namespace, target))
                    region = model.spec.region if isinstance(model, Model) else None
                    system = f"model {target}"
                else:
                    connector = connectors.get((namespace, target))
                    region = connector.spec.region if isinstance(connector, Connector) else None
                    system = _system(connector if isinstance(connector, Connector) else None)
                reason = violation(pinned, kind, target, region, workflow=name)
                flows.append(Flow(label, kind, target, system, region, reason is None, reason))
        sources = sorted(
            f"kafka topic {c.spec.kafka_source.topic} (connector {c.metadata.get('name')})"
            for (ns, _), c in connectors.items()
            if ns == namespace and c.spec.kafka_source is not None and c.spec.kafka_source.workflow == name
        )
        out.append(
            WorkflowFlows(
                namespace=namespace,
                workflow=name,
                data_classes=sorted(classes),
                pinned_regions=sorted(pinned) if pinned is not None else None,
                sources=sources,
                flows=flows,
            )
        )
    return out


def render_text(flows: Sequence[WorkflowFlows]) -> str:
    lines = []
    for wf in flows:
        pinned = ", ".join(wf.pinned_regions) if wf.pinned_regions is not None else "any region (no residency policy)"
        lines.append(f"workflow {wf.namespace}/{wf.workflow}")
        lines.append(f"  data classes: {', '.join(wf.data_classes) or '(none declared)'}")
        lines.append(f"  residency:    {pinned or 'none allowed (the regions of its policies do not overlap)'}")
        for source in wf.sources:
            lines.append(f"  from          {source}")
        for flow in wf.flows:
            mark = "ok    " if flow.allowed else "DENIED"
            lines.append(f"  {mark} step {flow.step} -> {flow.system} [region {flow.region or 'unknown'}]")
            if flow.reason:
                lines.append(f"         {flow.reason}")
        if not wf.flows:
            lines.append("  (no model or connector steps: the data stays in aiplane)")
    return "\n".join(lines) + ("\n" if lines else "no workflows found\n")


def _from_cluster() -> list[Resource]:
    import kubernetes

    from aiplane.manifests import parse

    load: Callable[[], None] = kubernetes.config.load_kube_config
    load()
    api = kubernetes.client.CustomObjectsApi()
    resources: list[Resource] = []
    for plural in ("workflows", "models", "connectors", "policies"):
        listed: Any = api.list_cluster_custom_object("aiplane.io", "v1alpha1", plural)
        for item in listed.get("items", []):
            item.pop("status", None)  # the report is about what is declared
            for key in ("managedFields", "resourceVersion", "uid", "generation", "creationTimestamp"):
                item.get("metadata", {}).pop(key, None)
            parsed = parse(item, f"{plural}/{item.get('metadata', {}).get('name')}")
            if parsed is not None:
                resources.append(parsed)
    return resources


def command(args: argparse.Namespace) -> int:
    from aiplane.manifests import ManifestError, load

    if not args.cluster and not args.paths:
        print("aiplane dataflow: give manifest files or folders, or --cluster", file=sys.stderr)
        return 2
    try:
        resources = _from_cluster() if args.cluster else load(args.paths)
    except ManifestError as error:
        print(f"aiplane dataflow: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # the kubernetes client's config and API errors: say which, no traceback
        if not args.cluster:
            raise
        print(f"aiplane dataflow: cannot read the cluster: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    flows = report(resources)
    if args.json:
        json.dump([asdict(wf) for wf in flows], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(flows))
    return 1 if any(not f.allowed for wf in flows for f in wf.flows) else 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "dataflow", help="report which workflows send which data classes to which systems and regions"
    )
    parser.add_argument("paths", nargs="*", type=Path, help="manifest files or folders")
    parser.add_argument("--cluster", action="store_true", help="read the resources from the cluster (KUBECONFIG)")
    parser.add_argument("--json", action="store_true", help="JSON instead of text")
    parser.set_defaults(func=command)
