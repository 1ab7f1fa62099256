"""Folds a validation into ``Workflow.status``: Valid and Ready conditions, the version new tasks run. Pure."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crds.checks import Problem
from crds.workflow import WorkflowStatus
from operators.model.status import Conditions

VALID = "Valid"
READY = "Ready"


def fold(
    previous: WorkflowStatus | None,
    *,
    generation: int,
    version: str,
    problems: list[Problem],
    unready: list[str],
    now: datetime,
) -> WorkflowStatus:
    """``version``: the content version of the current spec; published only when the spec is valid, otherwise the
    last valid version stays in ``status.version`` (what running and new tasks keep using)."""
    before = previous or WorkflowStatus()
    make = Conditions(before.conditions, generation, now)
    if problems:
        reasons = {p.reason for p in problems}
        reason = reasons.pop() if len(reasons) == 1 else "InvalidSpec"
        message = "; ".join(p.message for p in problems)
        kept = before.version
        if kept is not None:
            message += f" (new tasks still run version {kept}, the last valid one)"
        valid = make(VALID, False, reason, message)
        ready = make(READY, False, "Invalid", "the spec is not valid; see the Valid condition")
        published = kept
    else:
        valid = make(VALID, True, "Valid", f"version {version}")
        if unready:
            ready = make(READY, False, "DependenciesNotReady", f"waiting for {', '.join(unready)} to be Ready")
        else:
            ready = make(READY, True, "Published", f"new tasks run version {version}")
        published = version
    return before.model_copy(
        update={"observed_generation": generation, "conditions": [valid, ready], "version": published}
    )


def to_patch(status: WorkflowStatus) -> dict[str, Any]:
    body: dict[str, Any] = status.model_dump(by_alias=True, mode="json")
    return body
