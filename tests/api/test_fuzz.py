"""Schemathesis against the app's own OpenAPI, in-process: no input, however bad, produces a 500, and every
response matches what the schema promises (status code, content type, body).

Driven through ``APIOperation.as_strategy`` and Hypothesis directly rather than schemathesis' pytest plugin
(whose fixture-based loader does not run under pytest 9). Every operation gets schema-conforming (positive) and
schema-violating (negative) requests, a bounded number of each, derandomized so a run is repeatable.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from engine import Worker
from tests.api.conftest import Keys, auth

EXAMPLES_PER_OPERATION = 15
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def api_schema(app: FastAPI, worker: Worker, tmp_path: Path) -> Iterator[Any]:
    set_hypothesis_home_dir(tmp_path / "hypothesis")  # its caches go there, not into the work tree
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    set_hypothesis_home_dir(None)
    # Schemathesis keeps the apps whose lifespan it started for the whole process; this engine closes next.
    from schemathesis.python.asgi import shutdown_lifespans

    shutdown_lifespans()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_a_server_error(api_schema: Any, keys: Keys, mode: GenerationMode) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15
    # As the tenant's admin, so requests get past the role checks to the handlers (401s are tested elsewhere).
    headers = auth(keys.root)
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not _has_inputs(operation):
            continue  # nothing to get wrong (GET /healthz)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        run()


def _has_inputs(operation: Any) -> bool:
    return any(
        len(container) > 0
        for container in (operation.path_parameters, operation.query, operation.headers, operation.body)
    )
