"""Checks a Workflow against its spec's own rules (``crds.checks``: graph, cycles, CEL) and against the namespace
it lives in: every Model, Connector and Policy it names must exist there, and a connector step must name a
Connector it can call. Pure: what the namespace holds comes in as ``Namespace``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from crds import checks
from crds.workflow import Step, WorkflowSpec

# Connector types a step can call; a kafkaSource feeds a workflow and is never called by one.
CALLABLE = ("http", "postgres", "kafkaSink")


@dataclass(frozen=True)
class ConnectorSeen:
    """What validation and readiness need of a Connector in the namespace."""

    type: str
    queries: tuple[str, ...] = ()
    ready: bool = False


@dataclass(frozen=True)
class Namespace:
    """The Models, Connectors and Policies of the Workflow's namespace, as the operator's indexes saw them."""

    models: Mapping[str, bool] = field(default_factory=dict)  # name -> Ready
    connectors: Mapping[str, ConnectorSeen] = field(default_factory=dict)
    policies: frozenset[str] = frozenset()
    #: The namespace's Workflows (an agent's workflow actions run them); None: not known, not checked.
    workflows: frozenset[str] | None = None


def problems(spec: WorkflowSpec, namespace: Namespace, where: str) -> list[checks.Problem]:
    """Everything that keeps the engine from running ``spec`` in ``where`` (the namespace's name, for messages)."""
    return checks.problems(spec) + references(spec, namespace, where)


def references(spec: WorkflowSpec, namespace: Namespace, where: str) -> list[checks.Problem]:
    found: list[checks.Problem] = []
    for step in spec.steps:
        if step.model is not None and step.model.name not in namespace.models:
            found.append(
                checks.Problem(
                    f"steps.{step.name}.model.name",
                    f"step {step.name!r} calls Model {step.model.name!r}, which does not exist in namespace "
                    f"{where}; create it or fix model.name",
                    reason="ModelNotFound",
                )
            )
        if step.connector is not None:
            found += _connector(step.name, step.connector.name, step.connector.operation, namespace, where)
        if step.agent is not None:
            found += _agent(step, namespace, where)
    for policy in spec.policies:
        if policy not in namespace.policies:
            found.append(
                checks.Problem(
                    "policies",
                    f"spec.policies names Policy {policy!r}, which does not exist in namespace {where}",
                    reason="PolicyNotFound",
                )
            )
    return found


def _agent(step: Step, namespace: Namespace, where: str) -> list[checks.Problem]:
    """An agent's planner and every action's Model, Connector or Workflow must exist in the namespace."""
    agent = step.agent
    assert agent is not None
    found: list[checks.Problem] = []
    models = [("agent.planner.model", agent.planner.model)]
    models += [(f"agent.actions.{a.name}.model.name", a.model.name) for a in agent.actions if a.model is not None]
    for field_, model in models:
        if model not in namespace.models:
            found.append(
                checks.Problem(
                    f"steps.{step.name}.{field_}",
                    f"step {step.name!r} {field_} names Model {model!r}, which does not exist in namespace {where}; "
                    "create it or fix the name",
                    reason="ModelNotFound",
                )
            )
    for action in agent.actions:
        if action.connector is not None:
            found += _connector(
                step.name,
                action.connector.name,
                action.connector.operation,
                namespace,
                where,
                field_=f"agent.actions.{action.name}.connector",
            )
        known = namespace.workflows
        missing = action.workflow is not None and known is not None and action.workflow.name not in known
        if missing and action.workflow is not None:
            found.append(
                checks.Problem(
                    f"steps.{step.name}.agent.actions.{action.name}.workflow.name",
                    f"step {step.name!r} action {action.name!r} runs Workflow {action.workflow.name!r}, which "
                    f"does not exist in namespace {where}; create it or fix workflow.name",
                    reason="WorkflowNotFound",
                )
            )
    return found


def _connector(
    step: str,
    name: str,
    operation: str | None,
    namespace: Namespace,
    where: str,
    *,
    field_: str = "connector",
) -> list[checks.Problem]:
    at = f"steps.{step}.{field_}"
    seen = namespace.connectors.get(name)
    if seen is None:
        message = f"step {step!r} calls Connector {name!r}, which does not exist in namespace {where}"
        return [checks.Problem(f"{at}.name", f"{message}; create it or fix {field_}.name", reason="ConnectorNotFound")]
    if seen.type not in CALLABLE:
        return [
            checks.Problem(
                f"{at}.name",
                f"step {step!r} calls Connector {name!r} of type {seen.type}, which a step cannot call "
                f"(a step can call {', '.join(CALLABLE)})",
                reason="ConnectorNotCallable",
            )
        ]
    if seen.type == "postgres":
        if operation is None and len(seen.queries) != 1:
            return [
                checks.Problem(
                    f"{at}.operation",
                    f"step {step!r} names no operation, and postgres Connector {name!r} has "
                    f"{len(seen.queries)} queries; set {field_}.operation to one of: {', '.join(seen.queries)}",
                    reason="QueryNotFound",
                )
            ]
        if operation is not None and operation not in seen.queries:
            return [
                checks.Problem(
                    f"{at}.operation",
                    f"step {step!r} runs query {operation!r}, which postgres Connector {name!r} does not have "
                    f"(it has: {', '.join(seen.queries) or 'none'})",
                    reason="QueryNotFound",
                )
            ]
    return []


def unready(spec: WorkflowSpec, namespace: Namespace) -> list[str]:
    """The Models and Connectors the workflow calls that exist but are not Ready, as ``Kind/name``."""
    found: list[str] = []
    for step in spec.steps:
        models = [step.model.name] if step.model is not None else []
        connectors = [step.connector.name] if step.connector is not None else []
        if step.agent is not None:
            models += [step.agent.planner.model, *(a.model.name for a in step.agent.actions if a.model is not None)]
            connectors += [a.connector.name for a in step.agent.actions if a.connector is not None]
        found += [f"Model/{model}" for model in models if namespace.models.get(model) is False]
        for connector in connectors:
            seen = namespace.connectors.get(connector)
            if seen is not None and not seen.ready:
                found.append(f"Connector/{connector}")
    return sorted(set(found))
