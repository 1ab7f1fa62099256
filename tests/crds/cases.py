"""Manifests for the CRD tests: the claims-triage examples, and bad variations of them with the error they must get.

Each bad case changes one thing in a valid example, so the test proves that exactly that thing is refused.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "claims-triage"
_DELETE = object()


def example_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def example(kind: str, name: str | None = None) -> dict[str, Any]:
    for doc in example_documents():
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name):
            return doc
    raise LookupError(f"no example {kind}/{name}")


@dataclass(frozen=True)
class BadCase:
    """A one-change variation of an example that the apiserver must reject with a message naming the field."""

    id: str
    kind: str
    changes: dict[str, Any]
    # The field the error must name (as the apiserver writes paths: spec.steps[0].type) and a fragment of its message.
    field: str
    message: str
    # Unknown fields are pruned silently unless the client asks for strict field validation.
    strict: bool = False
    example_name: str | None = None

    def manifest(self) -> dict[str, Any]:
        doc = copy.deepcopy(example(self.kind, self.example_name))
        doc["metadata"]["name"] = f"bad-{self.id}"
        for path, value in self.changes.items():
            _set(doc, path, value)
        return doc


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path ("spec.steps.0.type"); list indexes are numbers; _DELETE removes the key."""
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    elif value is _DELETE:
        del node[last]
    else:
        node[last] = value


def _agent_step(escalation: dict[str, Any] | None = None, **target: Any) -> dict[str, Any]:
    """An agent step in place of the example's first step, with one action calling ``target``."""
    agent: dict[str, Any] = {
        "goal": "Complete claim {{ input.claimId }}",
        "planner": {"model": "claims-planner"},
        "actions": [{"name": "extract", "description": "Extract the claim's fields.", **target}],
    }
    if escalation is not None:
        agent["escalation"] = escalation
    return {"name": "extract", "type": "agent", "agent": agent}


BAD_CASES: tuple[BadCase, ...] = (
    BadCase(
        "canary-weight-150",
        "Model",
        {"spec.canary": {"version": "1.1.0", "steps": [10, 150]}},
        "spec.canary.steps[1]",
        "less than or equal to 100",
    ),
    BadCase(
        "canary-steps-descending",
        "Model",
        {"spec.canary": {"version": "1.1.0", "steps": [50, 10]}},
        "spec.canary.steps",
        "ascending",
    ),
    BadCase(
        "canary-same-version",
        "Model",
        {"spec.canary": {"version": "1.0.0"}},
        "spec.canary.version",
        "must differ from the stable version",
    ),
    BadCase(
        "canary-with-rollout",
        "Model",
        {"spec.canary": {"version": "1.1.0"}, "spec.rollout": {"steps": [50, 100]}},
        "spec.canary",
        "canary and rollout are two ways to roll a version out, set one",
    ),
    BadCase(
        "rollout-steps-descending",
        "Model",
        {"spec.rollout": {"steps": [50, 10]}},
        "spec.rollout.steps",
        "ascending",
    ),
    BadCase(
        "min-above-max-replicas",
        "Model",
        {"spec.minReplicas": 5, "spec.maxReplicas": 2},
        "spec.minReplicas",
        "minReplicas must be less than or equal to maxReplicas",
    ),
    BadCase("missing-bento", "Model", {"spec.bento": _DELETE}, "spec.bento", "Required value"),
    BadCase("replicas-wrong-type", "Model", {"spec.minReplicas": "two"}, "spec.minReplicas", "integer"),
    BadCase(
        "negative-gpu-count",
        "Model",
        {"spec.resources.gpu.count": -1},
        "spec.resources.gpu.count",
        "greater than or equal to 0",
    ),
    BadCase("version-with-space", "Model", {"spec.version": "1.0 beta"}, "spec.version", "should match"),
    BadCase("unknown-model-field", "Model", {"spec.replicas": 3}, "spec.replicas", "unknown field", strict=True),
    BadCase(
        "unknown-step-type",
        "Workflow",
        {"spec.steps.0.type": "script"},
        "spec.steps[0].type",
        'Unsupported value: "script"',
    ),
    BadCase(
        "negative-retries",
        "Workflow",
        {"spec.steps.0.retry.maxAttempts": -1},
        "spec.steps[0].retry.maxAttempts",
        "greater than or equal to 1",
    ),
    BadCase(
        "next-names-missing-step",
        "Workflow",
        {"spec.steps.2.next": "nowhere"},
        "spec.steps",
        "every step's next must name a step of this workflow",
    ),
    BadCase(
        "branch-names-missing-step",
        "Workflow",
        {"spec.steps.1.rules.branches.0.next": "nowhere"},
        "spec.steps",
        "every step's rules.branches[].next must name a step of this workflow",
    ),
    BadCase(
        "model-step-without-model",
        "Workflow",
        {"spec.steps.0.model": _DELETE},
        "spec.steps[0].model",
        "a step of type model needs a 'model' block",
    ),
    BadCase("duplicate-step-name", "Workflow", {"spec.steps.1.name": "extract"}, "spec.steps[1]", "Duplicate value"),
    BadCase(
        "bad-timeout", "Workflow", {"spec.steps.0.timeout": "ten seconds"}, "spec.steps[0].timeout", "should match"
    ),
    BadCase("no-steps", "Workflow", {"spec.steps": []}, "spec.steps", "at least 1 items"),
    BadCase(
        "sla-escalates-to-missing-step",
        "Workflow",
        {"spec.sla.escalateTo": "nowhere"},
        "spec.sla.escalateTo",
        "must name a step of this workflow",
    ),
    BadCase(
        "next-and-end",
        "Workflow",
        {"spec.steps.0.end": True, "spec.steps.0.next": "decide"},
        "spec.steps[0].next",
        "next or end, not both",
    ),
    BadCase(
        "agent-action-with-two-targets",
        "Workflow",
        {"spec.steps.0": _agent_step(model={"name": "claims-extractor"}, connector={"name": "claims-results"})},
        "spec.steps[0].agent.actions[0]",
        "exactly one of model, connector or workflow",
    ),
    BadCase(
        "agent-escalates-to-missing-step",
        "Workflow",
        {"spec.steps.0": _agent_step(model={"name": "claims-extractor"}, escalation={"to": "nowhere"})},
        "spec.steps",
        "agent.escalation.to must name a step of this workflow",
    ),
    BadCase(
        "connector-type-block-mismatch",
        "Connector",
        {"spec.type": "http"},
        "spec.http",
        "a connector of type http needs a 'http' block",
        example_name="claims-intake",
    ),
    BadCase(
        "http-url-not-http",
        "Connector",
        {"spec.type": "http", "spec.kafkaSink": _DELETE, "spec.http": {"url": "ftp://files.example.com"}},
        "spec.http.url",
        "should match",
        example_name="claims-decisions",
    ),
    BadCase(
        "zero-rate-limit",
        "Policy",
        {"spec.rateLimits.0.requestsPerSecond": 0},
        "spec.rateLimits[0].requestsPerSecond",
        "greater than 0",
    ),
    BadCase(
        "unknown-pii-entity",
        "Policy",
        {"spec.pii.entities": ["SOCIAL"]},
        "spec.pii.entities[0]",
        'Unsupported value: "SOCIAL"',
    ),
    BadCase(
        "sample-rate-above-one",
        "Policy",
        {"spec.payloadLogging.sampleRate": 1.5},
        "spec.payloadLogging.sampleRate",
        "less than or equal to 1",
    ),
    BadCase("missing-spec", "Policy", {"spec": _DELETE}, "spec", "Required value"),
)
