#!/usr/bin/env bash
# A real Kubernetes control plane for tests, with simulated nodes: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok, run as plain local processes on loopback. Real API semantics (admission, RBAC,
# scheduling, controllers, garbage collection) without Docker, kubelets or root; kwok plays the kubelets, so pods
# on its fake nodes go Running without running anything.
#
# Usage:
#   hack/cluster.sh up       build missing binaries, start the cluster, wait until it can take pods (idempotent)
#   hack/cluster.sh down     stop the processes this script started and remove the cluster's state
#   hack/cluster.sh env      print KUBECONFIG=/abs/path; use: export $(hack/cluster.sh env)
#   hack/cluster.sh status   print each component and the nodes; exit 1 unless the cluster is up and healthy
#
# State (pids, logs, certs, kubeconfigs, ports, etcd data) lives in ${AIPLANE_STATE_DIR:-<repo>/.run}/cluster.
# Versions come from hack/versions.env; binaries from hack/build-tools.sh's cache.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE_ROOT="${AIPLANE_STATE_DIR:-${REPO_ROOT}/.run}"
STATE="${STATE_ROOT}/cluster"
PKI="${STATE}/pki"
KUBECONFIG_PATH="${STATE}/kubeconfig"
# Start order (each needs the ones before it).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
SERVICE_CIDR="10.96.0.0/16"
SERVICE_API_IP="10.96.0.1" # first address of SERVICE_CIDR: the `kubernetes` Service, so it must be in the cert
POD_CIDR="10.244.0.0/16"   # kwok hands pod IPs out of this; nothing routes them
CPU_NODES="${AIPLANE_CPU_NODES:-3}"
GPU_NODES="${AIPLANE_GPU_NODES:-2}"
START_TIMEOUT="${AIPLANE_START_TIMEOUT:-120}"

kubectl_() { kubectl --kubeconfig "${KUBECONFIG_PATH}" "$@"; }

bin_of() {
  case "$1" in
    etcd) tool_path etcd "${ETCD_VERSION}" ;;
    kwok) tool_path kwok "${KWOK_VERSION}" ;;
    kube-*) tool_path "$1" "${KUBE_VERSION}" ;;
  esac
}

# pid_of NAME prints the pid recorded for NAME if that process is still the binary we started; pids get reused,
# so a bare `kill -0` could mistake (and `down` could then kill) an unrelated process. The binary is the one
# recorded at start, not today's pinned version, so `down` still finds a cluster started with another version.
pid_of() {
  local file="${STATE}/pids/$1.pid" pid exe
  [[ -f "${file}" ]] || return 1
  pid="$(<"${file}")"
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  exe="$(readlink "/proc/${pid}/exe" 2>/dev/null)" || return 1
  # A binary rebuilt while running shows as "<path> (deleted)".
  [[ "${exe% (deleted)}" == "$(started_bin "$1")" ]] || return 1
  echo "${pid}"
}

# started_bin NAME: the binary NAME was started from (a state dir from an older script without the record: the
# pinned one).
started_bin() {
  if [[ -f "${STATE}/pids/$1.exe" ]]; then cat "${STATE}/pids/$1.exe"; else bin_of "$1"; fi
}

# etcd_healthy: etcd's /health over bash's /dev/tcp, so the script needs no curl.
etcd_healthy() {
  local port
  port="$(sed -n 's/^ETCD_PORT=//p' "${STATE}/ports.env")"
  # shellcheck disable=SC2016 # $1 expands in the inner bash
  timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "GET /health HTTP/1.0\r\n\r\n" >&3 &&
    grep -q "\"health\":\"true\"" <&3' _ "${port}"
}

apiserver_ready() { kubectl_ get --raw /readyz >/dev/null 2>&1; }

# all_running: every component is alive and is the version asked for now (else `up` replaces the cluster, so
# `KUBE_VERSION=... hack/cluster.sh up` switches versions).
all_running() {
  local c
  for c in "${COMPONENTS[@]}"; do
    pid_of "${c}" >/dev/null || return 1
    [[ "$(started_bin "${c}")" == "$(bin_of "${c}")" ]] || return 1
  done
}

# free_ports N prints N distinct TCP ports the kernel reports free on loopback right now. Fixed ports would clash
# with a second cluster (another checkout, a CI job) on the same machine.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# ---------------------------------------------------------------------------------------------------------------
# Certificates. ECDSA keys: generated in milliseconds, where RSA would cost seconds per `up`.

new_key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; chmod 600 "$1"; }

# sign_cert NAME SUBJECT EXTENSIONS: a leaf certificate signed by the cluster CA (or by ${CA_NAME}).
sign_cert() {
  local name="$1" subject="$2" ext="$3" ca="${CA_NAME:-ca}"
  new_key "${PKI}/${name}.key"
  openssl req -new -key "${PKI}/${name}.key" -subj "${subject}" -out "${PKI}/${name}.csr" 2>/dev/null
  openssl x509 -req -in "${PKI}/${name}.csr" -CA "${PKI}/${ca}.crt" -CAkey "${PKI}/${ca}.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days 3650 -sha256 -extfile <(printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "${ext}") \
    -out "${PKI}/${name}.crt" 2>/dev/null
  rm -f "${PKI}/${name}.csr"
}

gen_pki() {
  mkdir -p "${PKI}"
  new_key "${PKI}/ca.key"
  openssl req -x509 -new -key "${PKI}/ca.key" -subj "/CN=aiplane-test-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "${PKI}/ca.crt" 2>/dev/null
  sign_cert apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:${SERVICE_API_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  # Client identities: the CN is the user and O the groups that RBAC's bootstrap roles bind to.
  sign_cert admin "/O=system:masters/CN=aiplane-admin" "extendedKeyUsage=clientAuth"
  sign_cert kube-controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
  sign_cert kube-scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
  # kwok writes node and pod status for every kubelet it pretends to be; no bootstrap role covers that.
  sign_cert kwok "/O=system:masters/CN=kwok-controller" "extendedKeyUsage=clientAuth"
  # Aggregation layer: a CA of its own for the identity the apiserver presents to extension API servers, which
  # then trust the X-Remote-User headers it sends. Without it the controller-manager and scheduler log an error
  # about the missing requestheader CA on every start, and no aggregated API (metrics-server, say) could work.
  new_key "${PKI}/front-proxy-ca.key"
  openssl req -x509 -new -key "${PKI}/front-proxy-ca.key" -subj "/CN=aiplane-front-proxy-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "${PKI}/front-proxy-ca.crt" 2>/dev/null
  CA_NAME=front-proxy-ca sign_cert front-proxy-client "/CN=front-proxy-client" "extendedKeyUsage=clientAuth"
  # Service-account tokens: the apiserver signs them, the token controller needs the same private key.
  new_key "${PKI}/sa.key"
  openssl ec -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub" 2>/dev/null
}

# write_kubeconfig FILE IDENTITY: certificates embedded, so the file works from anywhere and outlives nothing.
write_kubeconfig() {
  local file="$1" who="$2"
  kubectl config --kubeconfig "${file}" set-cluster aiplane --server "https://127.0.0.1:${API_PORT}" \
    --certificate-authority "${PKI}/ca.crt" --embed-certs >/dev/null
  kubectl config --kubeconfig "${file}" set-credentials "${who}" --client-certificate "${PKI}/${who}.crt" \
    --client-key "${PKI}/${who}.key" --embed-certs >/dev/null
  kubectl config --kubeconfig "${file}" set-context aiplane --cluster aiplane --user "${who}" >/dev/null
  kubectl config --kubeconfig "${file}" use-context aiplane >/dev/null
  chmod 600 "${file}"
}

# ---------------------------------------------------------------------------------------------------------------
# Processes.

# start NAME ARGS...: runs the component in its own session (a Ctrl-C meant for the caller, or pytest's process
# group, must not take the cluster down half-way), stdio off the caller's pipes (else a caller that captures our
# output would wait for the cluster to exit), pid recorded from inside so it is the binary's own.
start() {
  local name="$1" bin
  shift
  bin="$(bin_of "${name}")"
  log "starting ${name}"
  echo "${bin}" >"${STATE}/pids/${name}.exe"
  # 8>&- 9>&-: the lock descriptors must not be inherited, or the component would hold this script's lock for as
  # long as it runs and the next `up` or `down` would wait forever.
  # shellcheck disable=SC2016 # $$ and $1 belong to the inner bash
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "${STATE}/pids/${name}.pid" "${bin}" "$@" \
    </dev/null >"${STATE}/logs/${name}.log" 2>&1 8>&- 9>&- &
  # Wait for the pid file, so pid_of can check the process from here on.
  wait_for "${name} to start" 10 test -s "${STATE}/pids/${name}.pid"
}

# expect_running NAME: fail with the component's log tail as soon as it has died, instead of at the timeout.
expect_running() {
  pid_of "$1" >/dev/null && return 0
  log "${1} exited; last lines of ${STATE}/logs/${1}.log:"
  tail -n 25 "${STATE}/logs/${1}.log" >&2 || true
  return 1
}

# wait_until DESCRIPTION CMD...: like wait_for, but gives up early when a component has died.
wait_until() {
  local what="$1" deadline=$((SECONDS + START_TIMEOUT)) c
  shift
  until "$@" >/dev/null 2>&1; do
    for c in "${COMPONENTS[@]}"; do
      [[ -f "${STATE}/pids/${c}.pid" ]] || continue
      expect_running "${c}" || die "${c} died while waiting for ${what}"
    done
    ((SECONDS < deadline)) || die "timed out after ${START_TIMEOUT}s waiting for ${what} (logs: ${STATE}/logs)"
    sleep 0.5
  done
}

# stop NAME...: SIGTERM the named components together, wait for all of them, SIGKILL whatever hangs on.
stop() {
  local c pid pids=()
  for c in "$@"; do
    pid="$(pid_of "${c}")" || continue
    log "stopping ${c} (pid ${pid})"
    kill -TERM "${pid}" 2>/dev/null || true
    pids+=("${pid}")
  done
  for pid in "${pids[@]}"; do
    # Graceful shutdown takes a second or two; past that, don't let `down` hang.
    if ! wait_for "pid ${pid} to exit" 20 bash -c "! kill -0 ${pid}"; then
      kill -KILL "${pid}" 2>/dev/null || true
      wait_for "pid ${pid} to exit after SIGKILL" 5 bash -c "! kill -0 ${pid}" || true
    fi
  done
}

# The clients first (together: none depends on another), then the apiserver, then etcd, so nothing spends its
# shutdown retrying a server that is already gone.
stop_all() {
  stop kwok kube-scheduler kube-controller-manager
  stop kube-apiserver
  stop etcd
}

# ---------------------------------------------------------------------------------------------------------------
# Nodes.

# node_manifest NAME POOL CPU MEMORY GPUS: a Node for kwok to manage (the annotation is its selector). Status is
# accepted on create, and kwok's node-initialize stage keeps the capacity given here while it marks the node Ready.
node_manifest() {
  local name="$1" pool="$2" cpu="$3" memory="$4" gpus="$5" gpu_labels="" spec=" {}" gpu_resource="" resources
  if ((gpus > 0)); then
    gpu_labels="
    nvidia.com/gpu.present: \"true\"
    nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB
    nvidia.com/gpu.count: \"${gpus}\"
    nvidia.com/gpu.memory: \"81920\""
    # Like a real GPU pool (and the GKE/EKS defaults): only pods that tolerate the taint land here.
    spec="
  taints:
  - key: nvidia.com/gpu
    value: present
    effect: NoSchedule"
    gpu_resource="
    nvidia.com/gpu: \"${gpus}\""
  fi
  resources="cpu: \"${cpu}\"
    memory: ${memory}
    pods: \"110\"
    ephemeral-storage: 100Gi${gpu_resource}"
  cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: ${name}
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: ${name}
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node-role.kubernetes.io/worker: ""
    type: kwok
    aiplane.io/node-pool: ${pool}${gpu_labels}
spec:${spec}
status:
  capacity:
    ${resources}
  allocatable:
    ${resources}
EOF
}

nodes_manifest() {
  local i
  for ((i = 0; i < CPU_NODES; i++)); do node_manifest "kwok-cpu-${i}" cpu 8 32Gi 0; done
  for ((i = 0; i < GPU_NODES; i++)); do node_manifest "kwok-gpu-${i}" gpu 32 256Gi 4; done
}

# Ready as kwok reports it, and the node lifecycle controller has lifted its not-ready taint: until both, the
# scheduler would leave a test's first pods Pending for reasons that have nothing to do with the test.
nodes_ready() {
  local want=$((CPU_NODES + GPU_NODES)) ready tainted
  ready="$(kubectl_ get nodes -l type=kwok \
    -o jsonpath='{range .items[*]}{range .status.conditions[?(@.type=="Ready")]}{.status}{"\n"}{end}{end}' |
    grep -c '^True$')" || true
  tainted="$(kubectl_ get nodes -l type=kwok -o jsonpath='{.items[*].spec.taints[*].key}' |
    tr ' ' '\n' | grep -c '^node.kubernetes.io/not-ready$')" || true
  ((ready >= want && tainted == 0))
}

# ---------------------------------------------------------------------------------------------------------------
# Commands.

# lock_state TIMEOUT_S: serialise up/down on this state dir; fd 8 stays open (and locked) until the script exits.
lock_state() {
  local lock="${STATE_ROOT}/cluster.lock" holders
  mkdir -p "${STATE_ROOT}"
  exec 8>"${lock}"
  flock -n 8 && return 0
  # Say who holds it, so a wait that is not another `up` building binaries is easy to diagnose.
  holders="$(exec 8>&-; for fd in /proc/[0-9]*/fd/*; do
    [[ "$(readlink "${fd}" 2>/dev/null)" == "${lock}" ]] && cut -d/ -f3 <<<"${fd}"
  done | grep -vx "$$" | sort -u | tr '\n' ' ')" || true
  log "waiting for ${lock}, held by pid(s) ${holders:-unknown}"
  flock -w "$1" 8
}

cluster_healthy() { [[ -f "${KUBECONFIG_PATH}" ]] && all_running && apiserver_ready; }

cmd_up() {
  # The common case, a healthy cluster, needs no lock: answering it at once keeps a second `up` instant even
  # while another caller holds the lock.
  if cluster_healthy; then
    log "cluster already running (KUBECONFIG=${KUBECONFIG_PATH})"
    return 0
  fi
  # Two callers at once (a pytest session and a shell) must not both start a cluster in the same directory. The
  # wait is long because the holder may be compiling the binaries on a cold machine.
  lock_state 3600 || die "another hack/cluster.sh still holds ${STATE_ROOT}/cluster.lock after an hour"
  if cluster_healthy; then
    log "cluster started by a concurrent caller (KUBECONFIG=${KUBECONFIG_PATH})"
    return 0
  fi
  if [[ -d "${STATE}" ]]; then
    # Something died or the machine rebooted: a partial cluster is worse than a fresh one for tests.
    log "found a stale or partial cluster in ${STATE}; replacing it"
    stop_all
    rm -rf "${STATE}"
  fi

  "${HACK_DIR}/build-tools.sh" etcd kube-apiserver kube-controller-manager kube-scheduler kwok
  command -v openssl >/dev/null || die "openssl is needed for the cluster's certificates (apt-get install -y openssl)"
  command -v kubectl >/dev/null || die "kubectl is needed (on PATH)"

  local started=${SECONDS}
  mkdir -p "${STATE}"/{pids,logs,kubeconfigs}
  local ports
  read -r -a ports <<<"$(free_ports 5)"
  ETCD_PORT="${ports[0]}" ETCD_PEER_PORT="${ports[1]}" API_PORT="${ports[2]}"
  KCM_PORT="${ports[3]}" SCHED_PORT="${ports[4]}"
  printf '%s\n' "ETCD_PORT=${ETCD_PORT}" "ETCD_PEER_PORT=${ETCD_PEER_PORT}" "API_PORT=${API_PORT}" \
    "KCM_PORT=${KCM_PORT}" "SCHED_PORT=${SCHED_PORT}" >"${STATE}/ports.env"

  gen_pki
  write_kubeconfig "${KUBECONFIG_PATH}" admin
  local c
  for c in kube-controller-manager kube-scheduler kwok; do
    write_kubeconfig "${STATE}/kubeconfigs/${c}.kubeconfig" "${c}"
  done

  # fsync off and a small backend quota: the data is thrown away with the cluster, and on a shared 2-core VM
  # fsync latency is what makes etcd (and so every API write) slow.
  start etcd --name aiplane --data-dir "${STATE}/etcd" \
    --listen-client-urls "http://127.0.0.1:${ETCD_PORT}" --advertise-client-urls "http://127.0.0.1:${ETCD_PORT}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster "aiplane=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --quota-backend-bytes $((512 * 1024 * 1024)) --auto-compaction-mode periodic --auto-compaction-retention 5m \
    --unsafe-no-fsync --log-level warn
  wait_until "etcd /health" etcd_healthy

  # --endpoint-reconciler-type=none: the apiserver would otherwise try (and loudly fail, every 10s) to publish
  # its loopback address as the `kubernetes` Service's endpoint; nothing in this cluster dials that Service.
  start kube-apiserver --etcd-servers "http://127.0.0.1:${ETCD_PORT}" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "${API_PORT}" \
    --tls-cert-file "${PKI}/apiserver.crt" --tls-private-key-file "${PKI}/apiserver.key" \
    --client-ca-file "${PKI}/ca.crt" \
    --requestheader-client-ca-file "${PKI}/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "${PKI}/front-proxy-client.crt" --proxy-client-key-file "${PKI}/front-proxy-client.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "${PKI}/sa.pub" --service-account-signing-key-file "${PKI}/sa.key" \
    --authorization-mode Node,RBAC --service-cluster-ip-range "${SERVICE_CIDR}" \
    --endpoint-reconciler-type none --allow-privileged=true --profiling=false
  wait_until "kube-apiserver /readyz" apiserver_ready

  # The cloud controllers are left out (no cloud); node-ipam too, since kwok assigns pod IPs itself.
  # Client rate and workers sized for bursts of objects (the operator benchmark makes 20 Deployments a second):
  # at the defaults (20 QPS, burst 30, 5 deployment and 5 replicaset workers) the deployment controller alone
  # spends ~4 calls per new Deployment (ReplicaSet, status, events), so it makes ReplicaSets at about 5/s and a
  # Deployment measured 35 s (p50) from create to its ReplicaSet; the apiserver and etcd here are nowhere near
  # busy at that rate. The endpoint-slice workers follow the Services one-for-one.
  start kube-controller-manager --kubeconfig "${STATE}/kubeconfigs/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "${STATE}/kubeconfigs/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "${STATE}/kubeconfigs/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "${KCM_PORT}" --leader-elect=false \
    --controllers '*,-service-lb-controller,-node-route-controller,-cloud-node-lifecycle-controller,-node-ipam-controller' \
    --use-service-account-credentials \
    --service-account-private-key-file "${PKI}/sa.key" --root-ca-file "${PKI}/ca.crt" \
    --cluster-signing-cert-file "${PKI}/ca.crt" --cluster-signing-key-file "${PKI}/ca.key" \
    --cluster-name aiplane --profiling=false \
    --kube-api-qps 300 --kube-api-burst 600 \
    --concurrent-deployment-syncs 25 --concurrent-replicaset-syncs 25 --concurrent-service-endpoint-syncs 10 \
    --concurrent-gc-syncs 30

  # 300 QPS for the same bursts: each pod costs the scheduler a binding and an event (default 50 QPS, burst 100).
  # The flags are deprecated in favour of a config file, but still honoured (1.35, 1.36) and simpler here.
  start kube-scheduler --kubeconfig "${STATE}/kubeconfigs/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "${STATE}/kubeconfigs/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "${STATE}/kubeconfigs/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "${SCHED_PORT}" --leader-elect=false --profiling=false \
    --kube-api-qps 300 --kube-api-burst 600

  # Only annotated nodes are kwok's, so a test can still create a Node that nobody manages (it goes NotReady).
  # Node IP on loopback: anything that dials a "kubelet" (kubectl logs/exec) gets a refusal on this machine rather
  # than sending traffic to a private address that nobody here owns. Pod IPs are data only; nothing routes them.
  start kwok --kubeconfig "${STATE}/kubeconfigs/kwok.kubeconfig" \
    --config "$(tool_path kwok-stages "${KWOK_VERSION}").yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --cidr "${POD_CIDR}" --node-ip 127.0.0.1 --node-lease-duration-seconds 40

  nodes_manifest | kubectl_ apply -f - >/dev/null
  wait_until "${CPU_NODES} CPU and ${GPU_NODES} GPU nodes to be Ready" nodes_ready
  # The ServiceAccount admission plugin rejects pods until the controller has made the namespace's `default` SA.
  wait_until "the default ServiceAccount" kubectl_ -n default get serviceaccount default
  for c in "${COMPONENTS[@]}"; do expect_running "${c}"; done
  log "cluster up in $((SECONDS - started))s: Kubernetes ${KUBE_VERSION}, API https://127.0.0.1:${API_PORT}"
  log "use it with: export KUBECONFIG=${KUBECONFIG_PATH}"
}

cmd_down() {
  # Stopping must work even when the lock is wedged (say, by a process a killed `up` left behind): after a
  # minute, go ahead; stopping by pid file is safe to repeat.
  lock_state 60 || log "warning: ${STATE_ROOT}/cluster.lock is still held; stopping anyway"
  [[ -d "${STATE}" ]] || { log "no cluster state in ${STATE}; nothing to stop"; return 0; }
  stop_all
  rm -rf "${STATE}"
  log "cluster stopped and ${STATE} removed"
}

cmd_env() {
  [[ -f "${KUBECONFIG_PATH}" ]] || die "no cluster in ${STATE}; run hack/cluster.sh up first"
  echo "KUBECONFIG=${KUBECONFIG_PATH}"
}

cmd_status() {
  local ok=0 c pid
  if [[ ! -d "${STATE}" ]]; then
    echo "cluster: down (no state in ${STATE})"
    return 1
  fi
  for c in "${COMPONENTS[@]}"; do
    if pid="$(pid_of "${c}")"; then
      printf '%-24s running (pid %s)\n' "${c}" "${pid}"
    else
      printf '%-24s NOT running (log: %s)\n' "${c}" "${STATE}/logs/${c}.log"
      ok=1
    fi
  done
  if apiserver_ready; then
    printf '%-24s ready at %s\n' "apiserver /readyz" "$(kubectl_ config view -o jsonpath='{.clusters[0].cluster.server}')"
    kubectl_ get nodes -L aiplane.io/node-pool
  else
    printf '%-24s NOT ready\n' "apiserver /readyz"
    ok=1
  fi
  echo "KUBECONFIG=${KUBECONFIG_PATH}"
  return "${ok}"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
