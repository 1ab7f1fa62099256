#!/usr/bin/env bash
# Re-resolves aiplane's Python dependencies to their newest compatible versions in a scratch virtualenv and
# writes the result to constraints.txt, which `make setup` installs with, so every machine tests the same set.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${REPO_ROOT}"
scratch="$(mktemp -d)"
trap 'rm -rf "${scratch}"' EXIT
python3 -m venv "${scratch}/venv"
"${scratch}/venv/bin/pip" install -q --upgrade pip
"${scratch}/venv/bin/pip" install -q -e ".[dev]"
{
  echo "# Pinned versions of every Python package, tested together; regenerate with hack/update-constraints.sh."
  "${scratch}/venv/bin/pip" freeze --all --exclude-editable | grep -v -e '^aiplane' -e '^pip=='
} >constraints.txt
log "wrote constraints.txt"
