#!/usr/bin/env bash
# Prometheus (Debian's package) on 127.0.0.1 for tests and by hand: it scrapes whatever targets are dropped into
# its targets folder (file service discovery), e.g. a gateway's /metrics, so the Model operator's canary analysis
# reads real metrics through the real query API.
#
#   hack/prometheus.sh up       start it (no-op when already running), wait until it is ready
#   hack/prometheus.sh down     stop what `up` started and delete its data
#   hack/prometheus.sh env      print PROMETHEUS_URL=http://127.0.0.1:<port> and PROMETHEUS_TARGETS_DIR=<dir>
#   hack/prometheus.sh status   say whether it runs; exit 0 if it does, 3 if not
#
# A target file is Prometheus' file_sd JSON: [{"targets": ["127.0.0.1:8080"], "labels": {"job": "gateway"}}].
#
# Environment:
#   AIPLANE_STATE_DIR            where runtime state lives (default <repo>/.run); Prometheus uses <it>/prometheus
#   PROMETHEUS_SCRAPE_INTERVAL   how often targets are scraped (default 1s: tests judge canaries within seconds)
#   PROMETHEUS_START_TIMEOUT     seconds `up` waits for readiness (default 60)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_ROOT="$(mkdir -p "${AIPLANE_STATE_DIR:-$REPO_ROOT/.run}" && cd "${AIPLANE_STATE_DIR:-$REPO_ROOT/.run}" && pwd)"
STATE_DIR="$STATE_ROOT/prometheus"
PID_FILE="$STATE_DIR/prometheus.pid"
ENV_FILE="$STATE_DIR/prometheus.env"
CONFIG_FILE="$STATE_DIR/prometheus.yml"
TARGETS_DIR="$STATE_DIR/targets"
LOG_FILE="$STATE_DIR/prometheus.log"
SCRAPE_INTERVAL="${PROMETHEUS_SCRAPE_INTERVAL:-1s}"
START_TIMEOUT="${PROMETHEUS_START_TIMEOUT:-60}"

log() { printf 'prometheus.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Only a prometheus process running *our* config counts: a stale pid file may name an unrelated process.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid cmdline
  pid="$(<"$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *prometheus* && "$cmdline" == *"$CONFIG_FILE"* ]] || return 1
  printf '%s\n' "$pid"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

ready() { python3 - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/-/ready", timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError:
    sys.exit(1)
PY
}

cmd_up() {
  local pid port
  if pid="$(running_pid)" && [[ -f "$ENV_FILE" ]]; then
    log "already running (pid $pid)"
    return 0
  fi
  command -v prometheus >/dev/null 2>&1 || die "prometheus not found (make setup installs Debian's package)"
  [[ -n "${pid:-}" ]] && kill -TERM "$pid" 2>/dev/null || true
  rm -rf "$STATE_DIR"
  mkdir -p "$STATE_DIR/data" "$TARGETS_DIR"
  port="$(free_port)"
  cat >"$CONFIG_FILE" <<EOF2
global:
  scrape_interval: $SCRAPE_INTERVAL
  scrape_timeout: $SCRAPE_INTERVAL
  evaluation_interval: $SCRAPE_INTERVAL
scrape_configs:
  - job_name: aiplane
    file_sd_configs:
      - files: ["$TARGETS_DIR/*.json"]
        refresh_interval: 1s
EOF2
  # setsid: it outlives this script and must not get a Ctrl-C meant for a test run.
  # shellcheck disable=SC2016 # $$ and $1 are for the inner shell
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PID_FILE" prometheus \
    --config.file="$CONFIG_FILE" --storage.tsdb.path="$STATE_DIR/data" --storage.tsdb.retention.time=1d \
    --web.listen-address="127.0.0.1:$port" --web.enable-lifecycle --log.level=warn \
    >"$LOG_FILE" 2>&1 </dev/null 9>&- &
  local deadline=$((SECONDS + START_TIMEOUT))
  until ready "$port"; do
    if ! running_pid >/dev/null; then
      tail -n 20 "$LOG_FILE" >&2 || true
      die "prometheus exited during start"
    fi
    ((SECONDS < deadline)) || { tail -n 20 "$LOG_FILE" >&2; die "not ready after ${START_TIMEOUT}s"; }
    sleep 0.2
  done
  printf 'PROMETHEUS_URL=http://127.0.0.1:%s\nPROMETHEUS_TARGETS_DIR=%s\n' "$port" "$TARGETS_DIR" >"$ENV_FILE"
  log "Prometheus up (pid $(running_pid), http://127.0.0.1:$port)"
}

cmd_down() {
  local pid waited=0
  if pid="$(running_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && ((waited < 100)); do sleep 0.1; waited=$((waited + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
    log "stopped (pid $pid)"
  else
    log "not running"
  fi
  rm -rf "$STATE_DIR"
}

cmd_env() {
  running_pid >/dev/null || die "not running (start it with: hack/prometheus.sh up)"
  [[ -f "$ENV_FILE" ]] || die "running but not ready yet"
  cat "$ENV_FILE"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    printf 'running pid=%s %s\n' "$pid" "$(tr '\n' ' ' <"$ENV_FILE" 2>/dev/null)"
    return 0
  fi
  printf 'stopped\n'
  return 3
}

case "${1:-}" in
  up|down|env|status) ;;
  *) printf 'usage: %s up|down|env|status\n' "$0" >&2; exit 2 ;;
esac
# Serialise up/down: two test sessions starting at once must not both launch one.
exec 9>"$STATE_ROOT/prometheus.lock"
flock 9
"cmd_$1"
