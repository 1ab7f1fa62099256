"""Set-up for the example tests: the claims model lives in ``examples/claims-triage/model`` (a folder with a dash
in its path, so not a package); put it on ``sys.path`` so its ``claims_model`` package imports as it does under
``bentoml serve --working-dir``."""

from __future__ import annotations

import sys
from pathlib import Path

CLAIMS_MODEL_DIR = Path(__file__).resolve().parents[2] / "examples" / "claims-triage" / "model"

if str(CLAIMS_MODEL_DIR) not in sys.path:
    sys.path.append(str(CLAIMS_MODEL_DIR))
