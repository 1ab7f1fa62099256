# Shared helpers for hack/*.sh. Sourced, never run.
# shellcheck shell=bash

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034 # used by the scripts that source this file
REPO_ROOT="$(cd "${HACK_DIR}/.." && pwd)"
# Built binaries live outside the repo so a fresh clone or `git clean` keeps them, keyed by version so two
# versions can sit side by side and switching back costs nothing.
AIPLANE_CACHE_DIR="${AIPLANE_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME}/.cache}/aiplane}"
AIPLANE_BIN_DIR="${AIPLANE_CACHE_DIR}/bin"

# shellcheck source=hack/versions.env
source "${HACK_DIR}/versions.env"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# tool_path NAME VERSION -> where the cached binary for that version lives.
tool_path() { printf '%s/%s-%s\n' "${AIPLANE_BIN_DIR}" "$1" "$2"; }

# wait_for DESCRIPTION TIMEOUT_S CMD... polls CMD every 0.5s; the components start in seconds, but on a
# loaded 2-core machine that can stretch, so callers pass generous timeouts rather than sleeping fixed times.
wait_for() {
  local what="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for ${what}"
      return 1
    fi
    sleep 0.5
  done
}
