"""The Model operator under load: Models created at a steady rate on the test cluster, against the same objects
created directly at the same rate (the baseline: what the apiserver, controllers, scheduler and kwok take
without the operator).

Subject: a Model per tick (CPU-only, one replica: a fixed size, so no autoscaler, see ``builders.autoscaled``),
with ``aiplane operator`` as a child process. Two figures per Model: queue latency, from the create call to the
Model's Deployment appearing in a watch (the wait in the operator's queue plus one reconcile's applies), and time
to Ready, from the create call to the Model's Ready condition turning True. Baseline: the objects the operator
makes for a Model (the Deployment with the same pod template, its Service and PodDisruptionBudget) created
directly per tick, timed from the create to the Deployment appearing, and to one replica ready with its Service
in place (able to serve, as the Model's Ready means). The Service matters: kube-apiserver allocates ClusterIPs
one at a time, which under a burst is slower than the rest. Both kinds are created in the same loop, so load
spikes hit both; the rate the cluster actually took is reported with the one offered.
Also reported: the operator's peak RSS. Issue targets: queue p99 <= 1 s, Ready p99 <= 5 s, RSS <= 300 MB, at
1,000 Models created at 10/s (``AIPLANE_BENCH_SCALE=smoke``: 20).

Extra kwok nodes are added for the run (the test cluster's five hold 550 pods) and removed after it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes

from aiplane.processes import stop_process_group
from benchmarks.harness import Comparison, percentile
from benchmarks.servers import ROOT, smoke
from operators.model import builders, naming

CLUSTER_SH = ROOT / "hack" / "cluster.sh"
PODS_PER_NODE = 250
VERSION = "1.0.0"


@dataclass(frozen=True)
class Sizes:
    models: int = 1000
    rate_per_s: float = 10.0
    settle_s: float = 600.0

    @classmethod
    def default(cls) -> Sizes:
        """The issue's size, the smoke size, or ``AIPLANE_BENCH_OPERATOR_MODELS`` Models (to find where it bends)."""
        if smoke():
            return cls(models=20, settle_s=180.0)
        return cls(models=int(os.environ.get("AIPLANE_BENCH_OPERATOR_MODELS", cls.models)))


@dataclass(frozen=True)
class Timing(Comparison):
    """A comparison of seconds-scale latencies, reported at p50 and p99 with what the issue targets."""

    target_s: float = 0.0
    note: str = ""

    def report(self) -> str:
        def ms(samples: list[float], q: float) -> str:
            return f"{percentile(samples, q) * 1000:.0f}"

        return (
            f"{self.name}: subject p50 {ms(self.subject_s, 0.5)} ms p99 {ms(self.subject_s, 0.99)} ms "
            f"(target p99 <= {self.target_s * 1000:.0f} ms), baseline p50 {ms(self.baseline_s, 0.5)} ms "
            f"p99 {ms(self.baseline_s, 0.99)} ms, ratio {self.ratio:.2f}x{self.note}"
        )


@dataclass
class Seen:
    """When the watches first saw things, by object name (monotonic clock)."""

    created: dict[str, float] = field(default_factory=dict)
    appeared: dict[str, float] = field(default_factory=dict)
    # When a baseline's Service create returned: it can serve from then on (a Model is Ready only with one).
    served: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self, table: dict[str, float], name: str) -> None:
        now = time.monotonic()
        with self.lock:
            table.setdefault(name, now)


def _kubeconfig() -> tuple[str, bool]:
    was_running = subprocess.run(["bash", str(CLUSTER_SH), "status"], capture_output=True, check=False).returncode == 0
    subprocess.run(["bash", str(CLUSTER_SH), "up"], check=True, stdout=subprocess.DEVNULL)
    env = subprocess.run(["bash", str(CLUSTER_SH), "env"], capture_output=True, text=True, check=True).stdout
    return env.strip().partition("=")[2], was_running


def _client(kubeconfig: str) -> kubernetes.client.ApiClient:
    load: Callable[..., Any] = kubernetes.config.new_client_from_config
    client: kubernetes.client.ApiClient = load(config_file=kubeconfig, persist_config=False)
    client.configuration.connection_pool_maxsize = 8
    return client


def _node(name: str) -> dict[str, Any]:
    capacity = {"cpu": "64", "memory": "256Gi", "pods": str(PODS_PER_NODE), "ephemeral-storage": "100Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "type": "kwok", "aiplane.io/node-pool": "bench"},
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }


@contextmanager
def _bench_nodes(api: _Api, pods: int) -> Iterator[None]:
    names = [f"kwok-bench-{uuid.uuid4().hex[:6]}-{i}" for i in range(math.ceil(pods / (PODS_PER_NODE - 20)))]
    for name in names:
        api.create_node(_node(name))
    try:
        yield
    finally:
        for name in names:
            api.delete_node(name)


@contextmanager
def _operator(kubeconfig: str, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    aiplane = Path(sys.executable).with_name("aiplane")
    env = {**os.environ, "KUBECONFIG": kubeconfig, "AIPLANE_LOG_FORMAT": "json"}
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            [str(aiplane), "operator", "--peering-lifetime", "5"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        stop_process_group(process, 30)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _watch(stop: threading.Event, lister: Callable[..., Any], on_event: Callable[[dict[str, Any]], None]) -> None:
    new_watch: Callable[[], Any] = kubernetes.watch.Watch
    while not stop.is_set():
        watch = new_watch()
        try:
            # Plain JSON, not the client's typed objects, and a long watch: deserialising every event of
            # 2,000 Deployments (and a full re-list every few seconds) kept this process seconds behind the
            # cluster under load, which showed as queue latency on both sides alike.
            for event in watch.stream(lister, timeout_seconds=60, deserialize=False):
                on_event(event["object"])
                if stop.is_set():
                    break
        except kubernetes.client.ApiException:
            stop.wait(0.5)
        finally:
            watch.stop()


def _model(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "aiplane.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {
            "bento": "service:Bench",
            "version": VERSION,
            "image": "aiplane/model-server:bench",
            "resources": {"cpu": "10m", "memory": "32Mi"},
            "minReplicas": 1,
            "maxReplicas": 1,
        },
    }


def _bare_objects(namespace: str, name: str) -> list[dict[str, Any]]:
    """What the operator makes for a Model (Deployment, Service, PodDisruptionBudget), made directly: no owner,
    outside the operator's label selector (so its watches never see the baseline), one replica."""
    from crds.model import Model

    model = Model.model_validate({**_model(name), "metadata": {"name": name, "namespace": namespace}})
    owner = builders.Owner(name=name, namespace=namespace, uid="none")
    objects = [
        builders.deployment(model, owner, builders.LiveVersion(VERSION, "service:Bench", "img", 1)),
        builders.service(model, owner, VERSION),
        builders.pod_disruption_budget(owner, VERSION),
    ]
    pods = {"aiplane.io/bench-pod": name}
    for obj in objects:
        del obj["metadata"]["ownerReferences"]
        obj["metadata"]["name"] = f"{name}-bare"
        obj["metadata"]["labels"] = {"aiplane.io/bench": "baseline"}
    deployment, service, budget = objects
    deployment["spec"]["selector"] = {"matchLabels": pods}
    deployment["spec"]["template"]["metadata"]["labels"] = pods
    service["spec"]["selector"] = pods
    budget["spec"]["selector"] = {"matchLabels": pods}
    return objects


def run() -> list[Comparison]:
    sizes = Sizes.default()
    kubeconfig, was_running = _kubeconfig()
    try:
        return _run(kubeconfig, sizes)
    finally:
        if not was_running:
            subprocess.run(["bash", str(CLUSTER_SH), "down"], check=False, stdout=subprocess.DEVNULL)


class _Api:
    """The typed client calls the benchmark makes, taking plain dicts (the generated types would add nothing)."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.client = client
        core = kubernetes.client.CoreV1Api(client)
        apps = kubernetes.client.AppsV1Api(client)
        custom = kubernetes.client.CustomObjectsApi(client)
        self.create_node: Callable[..., Any] = core.create_node
        self.delete_node: Callable[[str], Any] = core.delete_node
        self.create_namespace: Callable[..., Any] = core.create_namespace
        self.delete_namespace: Callable[[str], Any] = core.delete_namespace
        self.read_namespace: Callable[[str], Any] = core.read_namespace
        self.create_deployment: Callable[..., Any] = apps.create_namespaced_deployment
        self.create_service: Callable[..., Any] = core.create_namespaced_service
        self.create_pdb: Callable[..., Any] = kubernetes.client.PolicyV1Api(
            client
        ).create_namespaced_pod_disruption_budget
        self.list_deployments: Callable[..., Any] = apps.list_namespaced_deployment
        self.custom = custom

    def create_model(self, namespace: str, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object("aiplane.io", "v1alpha1", namespace, "models", body)

    def list_models(self, namespace: str, **kw: Any) -> Any:
        return self.custom.list_namespaced_custom_object("aiplane.io", "v1alpha1", namespace, "models", **kw)

    def as_dict(self, obj: Any) -> dict[str, Any]:
        sanitize: Callable[[Any], dict[str, Any]] = self.client.sanitize_for_serialization
        return obj if isinstance(obj, dict) else sanitize(obj)


def _install_crds(kubeconfig: str) -> None:
    aiplane = str(Path(sys.executable).with_name("aiplane"))
    crds = subprocess.run([aiplane, "crds"], capture_output=True, text=True, check=True).stdout
    subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", "-"],
        input=crds, text=True, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def _start_watches(api: _Api, namespace: str, seen: Seen, stop: threading.Event) -> None:
    def on_deployment(obj: Any) -> None:
        body = api.as_dict(obj)
        name = body["metadata"]["name"]
        seen.mark(seen.appeared, name)
        if (body.get("status") or {}).get("readyReplicas", 0) >= 1:
            seen.mark(seen.ready, name)

    def on_model(obj: dict[str, Any]) -> None:
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond["type"] == "Ready" and cond["status"] == "True":
                seen.mark(seen.ready, f"model/{obj['metadata']['name']}")

    def list_deployments(**kw: Any) -> Any:
        return api.list_deployments(namespace, **kw)

    def list_models(**kw: Any) -> Any:
        return api.list_models(namespace, **kw)

    for lister, handler in ((list_deployments, on_deployment), (list_models, on_model)):
        threading.Thread(target=_watch, args=(stop, lister, handler), daemon=True).start()


def _create_at_rate(api: _Api, namespace: str, names: list[str], rate_per_s: float, seen: Seen) -> float:
    """Create each Model (and its baseline Deployment) on schedule; returns the rate achieved.

    Creates go through a small pool so that a slow create call (a loaded apiserver) does not hold back the next
    one: the offered rate stays what was asked, and what the cluster managed is reported next to it.
    """

    def create(name: str) -> None:
        # Stamped before the call: a watch can deliver the new object before the create call has returned.
        seen.mark(seen.created, f"model/{name}")
        api.create_model(namespace, _model(name))
        deployment, service, budget = _bare_objects(namespace, name)
        seen.mark(seen.created, f"{name}-bare")
        # The Deployment first, like the operator's applies (which run side by side): the same measure point.
        api.create_deployment(namespace, deployment)
        api.create_service(namespace, service)
        seen.mark(seen.served, f"{name}-bare")
        api.create_pdb(namespace, budget)

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = []
        for i, name in enumerate(names):
            delay = start + i / rate_per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(create, name))
        for future in futures:
            future.result()
    return len(names) / (time.monotonic() - start)


def _wait_settled(names: list[str], seen: Seen, settle_s: float) -> None:
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        with seen.lock:
            if all(f"model/{n}" in seen.ready and f"{n}-bare" in seen.ready for n in names):
                return
        time.sleep(0.5)


def _run(kubeconfig: str, sizes: Sizes) -> list[Comparison]:
    api = _Api(_client(kubeconfig))
    _install_crds(kubeconfig)
    namespace = f"bench-operator-{uuid.uuid4().hex[:6]}"
    api.create_namespace({"metadata": {"name": namespace}})
    seen = Seen()
    stop = threading.Event()
    log_path = ROOT / ".run" / f"{namespace}-operator.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    names = [f"m{i:04d}" for i in range(sizes.models)]
    child = {name: naming.child_name(name, VERSION) for name in names}
    with _bench_nodes(api, 2 * sizes.models):
        try:
            with _operator(kubeconfig, log_path) as operator:
                _wait_leading(log_path, operator)
                _start_watches(api, namespace, seen, stop)
                achieved = _create_at_rate(api, namespace, names, sizes.rate_per_s, seen)
                _wait_settled(names, seen, sizes.settle_s)
                rss_mb = _peak_rss_mb(operator.pid)
        finally:
            stop.set()
            # Before the extra nodes go: kwok finishes the pods of the nodes it manages, while pods left on a
            # deleted node wait for the pod garbage collector, keeping the namespace (and the next run's
            # cluster) busy for many minutes after a large run.
            api.delete_namespace(namespace)
            _wait_gone(api, namespace, sizes.settle_s)
    missing = [n for n in names if f"model/{n}" not in seen.ready or child[n] not in seen.appeared]
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(names)} Models not Ready in {sizes.settle_s:.0f}s; see {log_path}")
    queue = [seen.appeared[child[n]] - seen.created[f"model/{n}"] for n in names]
    queue_base = [seen.appeared[f"{n}-bare"] - seen.created[f"{n}-bare"] for n in names]
    ready = [seen.ready[f"model/{n}"] - seen.created[f"model/{n}"] for n in names]
    # Ready to serve: a replica ready and the Service there (the operator's Ready waits for both too).
    ready_base = [max(seen.ready[f"{n}-bare"], seen.served[f"{n}-bare"]) - seen.created[f"{n}-bare"] for n in names]
    label = f"{sizes.models} Models offered at {sizes.rate_per_s:g}/s, created at {achieved:.1f}/s"
    rss = f"; operator peak RSS {rss_mb:.0f} MB (target <= 300 MB)"
    return [
        Timing(f"operator queue latency ({label})", queue, queue_base, quantile=0.99, target_s=1.0),
        Timing(f"operator time to Ready ({label})", ready, ready_base, quantile=0.99, target_s=5.0, note=rss),
    ]


def _wait_gone(api: _Api, namespace: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            api.read_namespace(namespace)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return
            raise
        time.sleep(1.0)


def _wait_leading(log_path: Path, operator: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if operator.poll() is not None:
            raise RuntimeError(f"the operator exited; see {log_path}")
        for line in log_path.read_text(errors="replace").splitlines():
            try:
                if "Resuming operations" in json.loads(line).get("message", ""):
                    return
            except json.JSONDecodeError:
                continue
        time.sleep(0.2)
    raise RuntimeError(f"the operator did not take the lead within {timeout_s:.0f}s; see {log_path}")
