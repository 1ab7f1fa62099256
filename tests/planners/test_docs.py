"""docs/planners.md names every field of the planner contract, in the section of its model, with the wire name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from crds import Model
from crds.planner import ActionSpec, Budget, PlanRequest, PlanResponse, TranscriptEntry
from crds.workflow import AgentAction, Planner
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


def _yaml_blocks() -> list[Any]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), re.DOTALL)]


def test_the_yaml_examples_are_valid() -> None:
    blocks = _yaml_blocks()
    models = [block for block in blocks if block.get("kind") == "Model"]
    planners = [block for block in blocks if "planner" in block]
    assert (len(models), len(planners)) == (1, 2)
    for block in models:
        Model.model_validate(block)
    for block in planners:
        planner = Planner.model_validate(block["planner"])
        actions = [AgentAction.model_validate(action) for action in block.get("actions", [])]
        config_model = RetrievalConfig if planner.model == "retrieval-planner" else ScriptedConfig
        config_model.model_validate(planner.config)
        assert all(action.name in {"request-document", "rerun-extraction"} for action in actions)
