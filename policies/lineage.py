"""Lineage and decision records: what produced a task's result, for an auditor. Pure.

Per task: the workflow name and version (a content hash of its spec), the sha256 of its stored input (canonical
JSON; None once retention purged it), the Policy versions whose decisions are on the audit log for it, and per
step a decision record:

- model steps: the model's name, the version the call went to and its endpoint; the model's ``scores`` and
  ``explanation`` when its service returns them (the explainability hook of the BentoML service contract: an
  API whose output object has an ``explanation`` key, and optionally ``scores``, gets them recorded here);
- connector steps: the Connector's name;
- rules steps: the variables they set and the branch they took (their output), and which rules fired: each branch
  condition tried, in order, with its verdict (``branches``: ``when``, ``next``, ``matched``; the first that matched
  is the one taken, and those after it were not tried);
- approval steps: the decision and who decided.

The engine records what produced each step's output with the step's completion event (``StepOutcome.lineage``);
``record`` assembles the view from the task, its step runs and those events.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

#: Keys of a model's output object that go into its decision record, when present.
EXPLANATION_KEYS = ("explanation", "scores")


def input_hash(value: Any) -> str | None:
    if value is None:
        return None
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _decision(step_type: str, output: Any, produced: Mapping[str, Any] | None) -> dict[str, Any]:
    decision: dict[str, Any] = dict(produced or {})
    if step_type == "model" and isinstance(output, Mapping):
        decision.update({key: output[key] for key in EXPLANATION_KEYS if key in output})
    elif step_type == "rules" and isinstance(output, Mapping):
        decision.update(vars=output.get("vars"), next=output.get("next"))
    elif step_type == "approval" and isinstance(output, Mapping):
        decision.update(
            decision=output.get("decision"),
            approvers=[d.get("approver") for d in output.get("decisions") or () if isinstance(d, Mapping)],
        )
    return decision


def record(
    *,
    task_id: str,
    workflow: str,
    workflow_version: str,
    input: Any,
    steps: Iterable[Mapping[str, Any]],
    completions: Iterable[Mapping[str, Any]],
    policies: Iterable[str] = (),
    region: str | None = None,
) -> dict[str, Any]:
    """The lineage of one task. ``steps``: its step runs in order (name, type, seq, state, output);
    ``completions``: the payloads of its ``step.completed`` events, in order; ``policies``: the Policy versions
    named by its audit records; ``region``: the task's own region (None: its workflow's pin alone)."""
    produced: dict[str, Mapping[str, Any]] = {}
    for payload in completions:
        lineage = payload.get("lineage")
        if isinstance(lineage, Mapping):
            produced[str(payload.get("step"))] = lineage
    return {
        "taskId": task_id,
        "workflow": {"name": workflow, "version": workflow_version},
        "inputHash": input_hash(input),
        "region": region,
        "policies": sorted(set(policies)),
        "steps": [
            {
                "name": step["name"],
                "type": step["type"],
                "seq": step["seq"],
                "state": step["state"],
                "decision": _decision(step["type"], step.get("output"), produced.get(step["name"])),
            }
            for step in steps
        ],
    }
