"""Model manifests the operator tests build on: the claims example as shipped, and small variations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from crds.model import Model

CLAIMS_MODEL = Path(__file__).resolve().parents[2] / "examples" / "claims-triage" / "model.yaml"


def claims_manifest() -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(CLAIMS_MODEL.read_text())
    return manifest


def model(**spec: Any) -> Model:
    """A CPU model named ``m`` with ``spec`` merged over a minimal one."""
    return Model.model_validate(
        {
            "metadata": {"name": "m", "namespace": "ns", "uid": "u-1", "generation": 1},
            "spec": {"bento": "service:Svc", "version": "1.0.0", **spec},
        }
    )
