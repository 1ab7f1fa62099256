#!/usr/bin/env bash
# Trains the claims example's model (examples/claims-triage/model) into the folder its service loads from
# ($AIPLANE_CLAIMS_MODEL_DIR, else ~/.cache/aiplane/claims-model/<version>/), so `bentoml serve` loads it instead of
# training at its first start. Nothing to do when the weights there are of the current training key (a hash of the
# training code and arguments): only a change to those retrains. hack/setup.sh runs it; the Containerfile runs the
# same module at image build.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${REPO_ROOT}"

PYTHON="${VENV:-.venv}/bin/python"
PYTHONPATH="${REPO_ROOT}/examples/claims-triage/model" "${PYTHON}" -m claims_model.train --if-stale "$@"
