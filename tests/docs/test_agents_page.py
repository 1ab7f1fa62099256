"""docs/agents.md names every field of the agent step and of a Policy's agentActions rules, as written in YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from crds.policy import AgentActionRule
from crds.workflow import Agent, AgentAction, AgentLimits, Escalation, Planner

PAGE = Path(__file__).resolve().parents[2] / "docs" / "agents.md"


def _described(page: str, name: str) -> bool:
    """A row for the field, or rows for its parts (a block's ``planner.model``, a list's ``actions[]``)."""
    return any(f"| `{name}{end}" in page for end in ("` |", ".", "[]"))


@pytest.mark.parametrize(
    ("model", "prefix"),
    [
        (Agent, ""),
        (Planner, "planner."),
        (AgentAction, "actions[]."),
        (AgentLimits, "limits."),
        (Escalation, "escalation."),
        (AgentActionRule, ""),
    ],
    ids=lambda value: value if isinstance(value, str) else value.__name__,
)
def test_every_field_is_described(model: type[BaseModel], prefix: str) -> None:
    page = PAGE.read_text()
    names = [f"{prefix}{field.alias or name}" for name, field in model.model_fields.items()]
    missing = [name for name in names if not _described(page, name)]
    assert not missing, f"docs/agents.md does not describe {', '.join(missing)}"
