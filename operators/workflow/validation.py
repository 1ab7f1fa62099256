"""Checks a Workflow against its spec's own rules (``crds.checks``: graph, cycles, CEL) and against the namespace
it lives in: every Model, Connector and Policy it names must exist there, and a connector step must name a
Connector it can call. Pure: what the namespace holds comes in as ``Namespace``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from crds import checks
from crds.workflow import WorkflowSpec

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


def _connector(step: str, name: str, operation: str | None, namespace: Namespace, where: str) -> list[checks.Problem]:
    field_ = f"steps.{step}.connector.name"
    seen = namespace.connectors.get(name)
    if seen is None:
        message = f"step {step!r} calls Connector {name!r}, which does not exist in namespace {where}"
        return [checks.Problem(field_, f"{message}; create it or fix connector.name", reason="ConnectorNotFound")]
    if seen.type not in CALLABLE:
        return [
            checks.Problem(
                field_,
                f"step {step!r} calls Connector {name!r} of type {seen.type}, which a step cannot call "
                f"(a step can call {', '.join(CALLABLE)})",
                reason="ConnectorNotCallable",
            )
        ]
    if seen.type == "postgres":
        if operation is None and len(seen.queries) != 1:
            return [
                checks.Problem(
                    f"steps.{step}.connector.operation",
                    f"step {step!r} names no operation, and postgres Connector {name!r} has "
                    f"{len(seen.queries)} queries; set connector.operation to one of: {', '.join(seen.queries)}",
                    reason="QueryNotFound",
                )
            ]
        if operation is not None and operation not in seen.queries:
            return [
                checks.Problem(
                    f"steps.{step}.connector.operation",
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
        if step.model is not None and namespace.models.get(step.model.name) is False:
            found.append(f"Model/{step.model.name}")
        if step.connector is not None:
            seen = namespace.connectors.get(step.connector.name)
            if seen is not None and not seen.ready:
                found.append(f"Connector/{step.connector.name}")
    return sorted(set(found))
