"""docs/planners.md names every field of the planner contract, in the section of its model, with the wire name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from crds.planner import ActionSpec, Budget, PlanRequest, PlanResponse, TranscriptEntry
from planners.expressions import activation
from planners.retrieval import RetrievalConfig
from planners.scripted import Rule, ScriptedConfig
from tests.planners.requests import request

PAGE = Path(__file__).resolve().parents[2] / "docs" / "planners.md"


def _section(heading: str) -> str:
    text = PAGE.read_text()
    match = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"docs/planners.md has no section {heading!r}"
    return match.group(1)


def _table_keys(section: str) -> set[str]:
    return set(re.findall(r"^\| `([A-Za-z]+)` \|", section, re.MULTILINE))


def _wire_names(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


@pytest.mark.parametrize("model", [PlanRequest, ActionSpec, TranscriptEntry, Budget, PlanResponse])
def test_every_contract_field_is_in_its_table(model: type[BaseModel]) -> None:
    assert _table_keys(_section(model.__name__)) == _wire_names(model)


def test_every_scripted_and_retrieval_key_is_in_its_table() -> None:
    assert _table_keys(_section("Scripted planner")) == _wire_names(Rule)
    assert {"rules", "otherwise"} == _wire_names(ScriptedConfig)
    assert _table_keys(_section("Retrieval planner")) == _wire_names(RetrievalConfig)


def test_every_cel_variable_is_in_the_table() -> None:
    assert _table_keys(_section("CEL in planner configs")) == set(activation(request()))
