"""The step graph: which step comes next. Pure functions over a WorkflowSpec."""

from __future__ import annotations

from crds.workflow import Step, WorkflowSpec


def step_named(spec: WorkflowSpec, name: str) -> Step:
    for step in spec.steps:
        if step.name == name:
            return step
    raise KeyError(f"workflow has no step {name!r}")


def first_step(spec: WorkflowSpec) -> Step:
    return spec.steps[0]


def following(spec: WorkflowSpec, step: Step, chosen: str | None = None) -> str | None:
    """The step after ``step``: the one a rules branch ``chosen``, else ``end`` (None), ``next``, or list order.

    None means the task is done.
    """
    if chosen is not None:
        return chosen
    if step.end:
        return None
    if step.next is not None:
        return step.next
    names = [s.name for s in spec.steps]
    index = names.index(step.name)
    return names[index + 1] if index + 1 < len(names) else None
