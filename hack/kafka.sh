#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, combined broker+controller) on 127.0.0.1 for tests and `aiplane dev`.
#
#   hack/kafka.sh up       start it (no-op when already running), wait until it serves metadata
#   hack/kafka.sh down     stop what `up` started and delete its data
#   hack/kafka.sh stop     stop the broker but keep its data, config and ports (a broker outage, for tests)
#   hack/kafka.sh start    start a stopped broker again from what `stop` kept: same data, same address
#   hack/kafka.sh env      print KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:<port>
#   hack/kafka.sh status   say whether it runs; exit 0 if it does, 3 if not
#   hack/kafka.sh fetch    only fetch and cache the jars (what `make setup` does)
#
# Environment:
#   KAFKA_VERSION          Kafka release to run (default below); jars cached per version
#   AIPLANE_STATE_DIR      where runtime state lives (default <repo>/.run); Kafka uses <it>/kafka
#   AIPLANE_CACHE_DIR      where jars are cached (default ${XDG_CACHE_HOME:-~/.cache}/aiplane)
#   AIPLANE_PYTHON         a Python with kafka-python, for the readiness check (default <repo>/.venv/bin/python)
#   KAFKA_HEAP_OPTS        broker heap flags (default -Xms128m -Xmx512m)
#   KAFKA_JVM_OPTS         other broker JVM flags (default below)
#   KAFKA_START_TIMEOUT    seconds `up` waits for the broker (default 120)
#
# Jars come from Maven Central (hack/kafka/pom.xml) rather than a release tarball because CI can reach package
# registries but not download sites.
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Absolute, because the broker gets these paths in its config and runs from another directory.
STATE_ROOT="$(mkdir -p "${AIPLANE_STATE_DIR:-$REPO_ROOT/.run}" && cd "${AIPLANE_STATE_DIR:-$REPO_ROOT/.run}" && pwd)"
STATE_DIR="$STATE_ROOT/kafka"
CACHE_ROOT="${AIPLANE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aiplane}"
LIBS_DIR="$CACHE_ROOT/kafka-$KAFKA_VERSION/libs"
# Written last, after every jar is in place: a half-finished fetch never looks complete.
LIBS_MARKER="$LIBS_DIR/.complete"
PID_FILE="$STATE_DIR/kafka.pid"
ENV_FILE="$STATE_DIR/kafka.env"
CONFIG_FILE="$STATE_DIR/server.properties"
VERSION_FILE="$STATE_DIR/version"
LOG_FILE="$STATE_DIR/kafka.log"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
JVM_OPTS="${KAFKA_JVM_OPTS--XX:+UseG1GC}"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

python_bin() {
  local candidate
  for candidate in "${AIPLANE_PYTHON:-}" "$REPO_ROOT/.venv/bin/python" python3; do
    [[ -n "$candidate" ]] || continue
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import kafka' >/dev/null 2>&1; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  die "no Python with kafka-python found (set AIPLANE_PYTHON or create $REPO_ROOT/.venv)"
}

# The pid file alone is not proof: after a reboot or a crash the pid may belong to an unrelated process, and
# `down` must never signal that. Only a java process running kafka.Kafka with *our* config counts.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(<"$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *kafka.Kafka* && "$cmdline" == *"$CONFIG_FILE"* ]] || return 1
  printf '%s\n' "$pid"
}

# A zombie still answers `kill -0`; in containers whose init does not reap, a stopped broker can stay one.
alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)" || return 1
  [[ "$state" != Z ]]
}

bootstrap_servers() {
  [[ -f "$ENV_FILE" ]] || return 1
  sed -n 's/^KAFKA_BOOTSTRAP_SERVERS=//p' "$ENV_FILE"
}

# The broker's own address as written into its config, for when the env file is missing.
configured_bootstrap() {
  sed -n 's|^advertised.listeners=PLAINTEXT://||p' "$CONFIG_FILE"
}

ensure_libs() {
  [[ -f "$LIBS_MARKER" ]] && return 0
  command -v mvn >/dev/null 2>&1 || die "Maven (mvn) is needed once to fetch Kafka $KAFKA_VERSION jars"
  mkdir -p "$(dirname "$LIBS_DIR")"
  # The cache is shared by every checkout and state dir on the machine, so fetches take their own lock; the
  # subshell drops it (and its fd) before the broker starts.
  (
    flock 8
    [[ -f "$LIBS_MARKER" ]] && exit 0
    log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS_DIR"
    staging="$(mktemp -d "$(dirname "$LIBS_DIR")/libs.partial.XXXXXX")"
    # Maven's output goes to a file: it writes terminal escapes even in batch mode, and only a failure needs it.
    if ! mvn -B -Dstyle.color=never -f "$REPO_ROOT/hack/kafka/pom.xml" \
        -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$staging" >"$staging.mvn.log" 2>&1; then
      tail -n 40 "$staging.mvn.log" >&2
      rm -rf "$staging" "$staging.mvn.log"
      die "Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
    fi
    rm -f "$staging.mvn.log"
    if [[ ! -f "$staging/kafka_2.13-$KAFKA_VERSION.jar" ]]; then
      rm -rf "$staging"
      die "kafka_2.13-$KAFKA_VERSION.jar missing after fetch"
    fi
    (cd "$staging" && ls -1 ./*.jar) >"$staging/.complete"
    rm -rf "$LIBS_DIR"
    mv "$staging" "$LIBS_DIR"
  ) 8>"$(dirname "$LIBS_DIR")/fetch.lock"
}

# Two ports in one Python call so they are distinct; the tiny race until the broker binds them is acceptable for
# a test broker, and a collision shows up as a failed start with the reason in the log.
free_ports() {
  "$1" - <<'PY'
import socket

socks = []
for _ in range(2):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

# Kafka cluster ids are 16 random bytes, base64url without padding. Generating one here saves a JVM start
# (`StorageTool random-uuid`); the leading '-' is avoided for the same reason Kafka does: CLIs read it as a flag.
cluster_id() {
  "$1" - <<'PY'
import base64
import os

while True:
    cid = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
    if not cid.startswith("-"):
        print(cid)
        break
PY
}

write_config() {
  local broker_port="$1" controller_port="$2"
  cat >"$CONFIG_FILE" <<EOF
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$broker_port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$broker_port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
log.dirs=$STATE_DIR/data
num.partitions=3
auto.create.topics.enable=true
# One broker: every internal topic must be satisfiable with a single replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# The defaults (50 partitions each) make the first consumer group or transaction of a session wait for dozens of
# partitions to be created; tests never need that spread.
offsets.topic.num.partitions=3
transaction.state.log.num.partitions=3
# Tests join groups one consumer at a time; the default 3 s delay would only slow every first poll.
group.initial.rebalance.delay.ms=0
EOF
  cat >"$STATE_DIR/log4j2.properties" <<'EOF'
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
# Per-request and state-change chatter would bury the few lines that explain a failed start.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
EOF
}

wait_ready() {
  local python="$1" pid="$2" bootstrap="$3"
  # One Python process polls, instead of one per attempt, because importing kafka-python costs more than a poll.
  if ! "$python" - "$pid" "$bootstrap" "$START_TIMEOUT" <<'PY'
import logging
import socket
import sys
import time
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

# kafka-python logs every refused connection while the broker boots; those are expected here.
logging.disable(logging.CRITICAL)
pid, bootstrap, timeout = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
host, _, port = bootstrap.rpartition(":")
# kafka-python's defaults back off up to 30 s between reconnects and wait 30 s to bootstrap, so a client created
# a moment before the broker listens would report it ready tens of seconds late. bootstrap_timeout_ms only
# exists in kafka-python 3, and older versions reject unknown settings.
client_config: dict[str, object] = {"request_timeout_ms": 5000, "reconnect_backoff_max_ms": 500}
if "bootstrap_timeout_ms" in KafkaAdminClient.DEFAULT_CONFIG:
    client_config["bootstrap_timeout_ms"] = 5000


def broker_alive() -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def accepts_connections() -> bool:
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def serves_metadata() -> bool:
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="aiplane-kafka-sh", **client_config)
        try:
            cluster = admin.describe_cluster()
        finally:
            admin.close()
    except (KafkaError, OSError):
        return False
    # A broker that answers but is not yet registered and unfenced lists no brokers and no controller;
    # topic creation would fail then, so only this counts as ready.
    return bool(cluster.get("brokers")) and cluster.get("controller_id", -1) != -1


deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    if not broker_alive():
        print("kafka.sh: the broker process exited during start", file=sys.stderr)
        sys.exit(2)
    # The plain TCP check is cheap; the client only comes in once something listens.
    if accepts_connections() and serves_metadata():
        sys.exit(0)
    time.sleep(0.2)
sys.exit(1)
PY
  then
    log "broker did not become ready within ${START_TIMEOUT}s; last log lines:"
    tail -n 40 "$LOG_FILE" >&2 || true
    return 1
  fi
}

stop_pid() {
  local pid="$1" waited=0
  kill -TERM "$pid" 2>/dev/null || return 0
  # Kafka's controlled shutdown usually takes a few seconds; past 30 s it is stuck and data is thrown away anyway.
  while alive "$pid"; do
    if (( waited >= 300 )); then
      log "pid $pid ignored SIGTERM for 30s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  waited=0
  while alive "$pid" && (( waited < 100 )); do sleep 0.1; waited=$((waited + 1)); done
  ! alive "$pid" || die "pid $pid survived SIGKILL"
}

cmd_up() {
  local pid python bootstrap
  if pid="$(running_pid)"; then
    if bootstrap="$(bootstrap_servers)" && [[ -n "$bootstrap" ]]; then
      log "already running (pid $pid, $bootstrap)"
      return 0
    fi
    # Started by an `up` that was interrupted before the broker was ready: finish that wait instead of
    # starting a second broker.
    python="$(python_bin)"
    bootstrap="$(configured_bootstrap)"
    wait_ready "$python" "$pid" "$bootstrap" || die "Kafka (pid $pid) is running but not ready; see $LOG_FILE"
    printf 'KAFKA_BOOTSTRAP_SERVERS=%s\n' "$bootstrap" >"$ENV_FILE"
    log "Kafka up (pid $pid, $bootstrap)"
    return 0
  fi
  python="$(python_bin)"
  ensure_libs
  command -v java >/dev/null 2>&1 || die "java (17+) not found on PATH"

  # Whatever is left here belongs to a broker that is gone; its data has no value to a fresh test run.
  rm -rf "$STATE_DIR"
  mkdir -p "$STATE_DIR/data"
  printf '%s\n' "$KAFKA_VERSION" >"$VERSION_FILE"

  local ports broker_port controller_port cid
  ports="$(free_ports "$python")"
  broker_port="${ports% *}"
  controller_port="${ports#* }"
  cid="$(cluster_id "$python")"
  write_config "$broker_port" "$controller_port"

  local -a common_opts
  common_opts=(-Djava.awt.headless=true "-Dlog4j2.configurationFile=$STATE_DIR/log4j2.properties"
    "-Dkafka.logs.dir=$STATE_DIR" -cp "$LIBS_DIR/*")

  # The formatter lives for a second or two: the C1 compiler alone and a serial GC start it fastest.
  if ! java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC "${common_opts[@]}" \
      kafka.tools.StorageTool format --standalone \
      --cluster-id "$cid" --config "$CONFIG_FILE" >"$STATE_DIR/format.log" 2>&1; then
    cat "$STATE_DIR/format.log" >&2
    die "formatting Kafka storage failed"
  fi
  launch "$python"
}

# Start the JVM on the formatted storage and the config in $STATE_DIR, wait until it serves, write the env file.
launch() {
  local python="$1" pid bootstrap
  local -a heap_opts jvm_opts common_opts
  read -r -a heap_opts <<<"$HEAP_OPTS"
  read -r -a jvm_opts <<<"$JVM_OPTS"
  common_opts=(-Djava.awt.headless=true "-Dlog4j2.configurationFile=$STATE_DIR/log4j2.properties"
    "-Dkafka.logs.dir=$STATE_DIR" -cp "$LIBS_DIR/*")
  rm -f "$PID_FILE" "$ENV_FILE"

  # setsid: the broker outlives this script and must not get the terminal's Ctrl-C meant for a test run.
  # The inner shell writes its own pid and execs java, so the pid file names the JVM itself; it runs in the
  # state dir so a crash dump (hs_err_pid*.log) lands next to the log.
  # 9>&- : the JVM must not inherit the lock, or every later `up`/`down` would block until it exits.
  # shellcheck disable=SC2016 # $$ and $1 are for the inner shell
  setsid bash -c 'echo $$ >"$1"; cd "$2"; shift 2; exec "$@"' _ "$PID_FILE" "$STATE_DIR" \
    java "${heap_opts[@]}" "${jvm_opts[@]}" "${common_opts[@]}" kafka.Kafka "$CONFIG_FILE" \
    >>"$LOG_FILE" 2>&1 </dev/null 9>&- &
  local waited=0
  while [[ ! -s "$PID_FILE" ]] && (( waited < 100 )); do sleep 0.05; waited=$((waited + 1)); done
  [[ -s "$PID_FILE" ]] || die "the broker did not start (no pid file); see $LOG_FILE"
  pid="$(<"$PID_FILE")"

  bootstrap="$(configured_bootstrap)"
  if ! wait_ready "$python" "$pid" "$bootstrap"; then
    stop_pid "$pid"
    die "Kafka failed to start; state kept in $STATE_DIR for inspection"
  fi
  printf 'KAFKA_BOOTSTRAP_SERVERS=%s\n' "$bootstrap" >"$ENV_FILE"
  log "Kafka $KAFKA_VERSION up (pid $pid, $bootstrap)"
}

# stop/start make a real outage: clients get connection refused meanwhile (a paused JVM would accept
# connections), and the broker comes back on the same address with its topics, offsets and groups.
cmd_stop() {
  local pid
  if pid="$(running_pid)"; then
    stop_pid "$pid"
    log "stopped (pid $pid); data kept in $STATE_DIR, \`start\` brings it back"
  else
    log "not running"
  fi
  # Kept for `start`; `env` says not running meanwhile because it checks the process first.
  rm -f "$ENV_FILE"
}

cmd_start() {
  local pid python
  if pid="$(running_pid)"; then
    log "already running (pid $pid)"
    return 0
  fi
  [[ -f "$CONFIG_FILE" && -f "$STATE_DIR/data/meta.properties" ]] \
    || die "no stopped broker in $STATE_DIR to start (start a new one with: hack/kafka.sh up)"
  local kept
  kept="$(cat "$VERSION_FILE" 2>/dev/null || echo unknown)"
  [[ "$kept" == "$KAFKA_VERSION" ]] \
    || die "the stopped broker's data is from Kafka $kept, not $KAFKA_VERSION (hack/kafka.sh down, then up)"
  python="$(python_bin)"
  ensure_libs
  command -v java >/dev/null 2>&1 || die "java (17+) not found on PATH"
  launch "$python"
}

cmd_down() {
  local pid
  if pid="$(running_pid)"; then
    stop_pid "$pid"
    log "stopped (pid $pid)"
  else
    log "not running"
  fi
  rm -rf "$STATE_DIR"
}

cmd_env() {
  local bootstrap
  running_pid >/dev/null || die "not running (start it with: hack/kafka.sh up)"
  bootstrap="$(bootstrap_servers)" || die "running but $ENV_FILE is missing"
  [[ -n "$bootstrap" ]] || die "running but not ready yet"
  printf 'KAFKA_BOOTSTRAP_SERVERS=%s\n' "$bootstrap"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    printf 'running pid=%s bootstrap=%s version=%s state=%s\n' "$pid" "$(bootstrap_servers || echo starting)" \
      "$(cat "$VERSION_FILE" 2>/dev/null || echo unknown)" "$STATE_DIR"
    return 0
  fi
  printf 'stopped\n'
  return 3
}

main() {
  local cmd="${1:-}"
  case "$cmd" in
    up|down|stop|start|env|status) ;;
    # Setup and CI fetch the jars ahead of the tests, so no test's timeout pays for Maven.
    fetch) ensure_libs; return ;;
    *) printf 'usage: %s up|down|stop|start|env|status|fetch\n' "$0" >&2; exit 2 ;;
  esac
  # Serialise up/down/stop/start: two test sessions starting at once must not both format and launch a broker.
  exec 9>"$STATE_ROOT/kafka.lock"
  flock 9
  "cmd_$cmd"
}

main "$@"
