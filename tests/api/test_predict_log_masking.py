"""A prediction's error logs are masked by the Policies that select its Model, as a task's are by its workflow's:
through the real gateway app (predict fast path and route), an error quoting personal data is logged with the
Model's own entities masked, not every entity redacted (which would hide what the Model's Policies let through)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
from fastapi import FastAPI

from api import create_api_key, create_app
from api.auth import follow_policies
from api.routers.models import PredictFastPath
from crds.model import Endpoint
from crds.policy import Policy
from engine import Engine
from policies.effective import Target
from policies.masking import WorkflowMasking
from policies.model_calls import default_target
from policies.sources import PolicySet
from policies.tokens import MaskingKeys

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

EMAIL = "jane.doe@example.com"
IBAN = "DE89370400440532013000"
MODELS = {"triage": Target("Model", "triage", "claims", {"team": "claims"})}
POLICY = Policy.model_validate(
    {
        "metadata": {"name": "claims-models", "namespace": "claims", "generation": 1},
        "spec": {
            "selector": {"kinds": ["Model"], "matchLabels": {"team": "claims"}},
            "pii": {"entities": ["EMAIL_ADDRESS"], "action": "redact"},
        },
    }
)


class _QuotingResolver:
    """A model resolver that fails quoting personal data, as a driver's error may quote what it was given."""

    def endpoints(self, name: str) -> list[Endpoint]:
        raise RuntimeError(f"cannot route {name} for {EMAIL}, account {IBAN}")


def _apps(engine: Engine) -> list[FastAPI]:
    fast, routed = create_app(engine), create_app(engine)
    routed.user_middleware = [m for m in routed.user_middleware if m.cls is not PredictFastPath]  # type: ignore[comparison-overlap]
    for app in (fast, routed):
        follow_policies(app.state.gateway, PolicySet([POLICY]), {}, models=lambda n: MODELS.get(n) or default_target(n))
    return [fast, routed]


@pytest.mark.parametrize("route", ["fast", "routed"])
def test_a_prediction_error_is_logged_masked_by_the_models_policies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, route: str
) -> None:
    caplog.set_level(logging.ERROR, logger="aiplane.gateway")
    # The workflows' masking (no workflow Policy masks anything here); the gateway masks logs only with one.
    masking = WorkflowMasking(lambda workflow: None, MaskingKeys(b"k" * 32))
    with Engine(f"sqlite:///{tmp_path / 'e.db'}", model_resolver=_QuotingResolver(), pii=masking) as engine:
        key = create_api_key(engine, "acme", "sam", ["submitter"])
        app = _apps(engine)[0 if route == "fast" else 1]
        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.post(
                "/v1/models/triage/predict", json={"claim": "x"}, headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code == 500, response.text
    [logged] = [r.getMessage() for r in caplog.records if r.name == "aiplane.gateway" and r.levelno >= logging.ERROR]
    assert "RuntimeError: cannot route triage" in logged
    assert EMAIL not in logged  # the Model's Policy masks emails
    assert "<EMAIL_ADDRESS>" in logged
    # What the Model's Policies do not mask stays readable: not every entity redacted as for an unknown request.
    assert IBAN in logged
