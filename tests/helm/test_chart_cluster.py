"""The chart on the real test cluster (kube-apiserver, kwok nodes): server-side dry run, install into a namespace
that enforces Pod Security `restricted`, every pod Running, upgrade, and an uninstall that leaves nothing but the
PII key's Secret it is told to keep."""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.fixtures.cluster import Cluster
from tests.fixtures.polling import assert_eventually
from tests.helm.chart import CHART, TRY_OUT, helm, render

INSTALL_TIMEOUT_S = 240.0


def _release() -> str:
    # Unique per test run: ClusterRoles are cluster-wide and the cluster is shared with other tests.
    return f"t{uuid.uuid4().hex[:8]}"


def _pods(cluster: Cluster, namespace: str, release: str) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}", "-o", "json"
    ).stdout
    pods: list[dict[str, Any]] = json.loads(out)["items"]
    return pods


def _assert_running(cluster: Cluster, namespace: str, release: str, expected: int) -> None:
    def check() -> None:
        pods = _pods(cluster, namespace, release)
        phases = {pod["metadata"]["name"]: pod["status"].get("phase") for pod in pods}
        assert len(phases) == expected, phases
        assert set(phases.values()) == {"Running"}, phases
        nodes = {pod["spec"].get("nodeName", "") for pod in pods}
        assert all(node.startswith("kwok-") for node in nodes), nodes

    assert_eventually(check, timeout=INSTALL_TIMEOUT_S, interval=1.0)


def _secret_value(cluster: Cluster, namespace: str, name: str, key: str) -> str:
    secret = cluster.kubectl("get", "secret", "-n", namespace, name, "-o", "json")
    value: str = json.loads(secret.stdout)["data"][key]
    assert value
    return value


def _existing(cluster: Cluster, namespace: str, names: list[str]) -> list[str]:
    """Which of ``names`` (kind/name) exist in ``namespace``, as kubectl names them."""
    out = cluster.kubectl("get", *names, "-n", namespace, "-o", "name", "--ignore-not-found").stdout.split()
    return [name for name in names if any(found.endswith(name.split("/", 1)[1]) for found in out)]


def _leftovers(cluster: Cluster, namespace: str, release: str) -> list[str]:
    """Every object labelled with the release, namespaced (in ``namespace``) or cluster-scoped."""
    selector = f"app.kubernetes.io/instance={release}"
    found: list[str] = []
    for namespaced in ("true", "false"):
        kinds = cluster.kubectl("api-resources", "--verbs=list", f"--namespaced={namespaced}", "-o", "name").stdout
        scope = ("-n", namespace) if namespaced == "true" else ()
        # Events carry no labels; aiplane.io kinds are the user's.
        listed = ",".join(kind for kind in kinds.split() if not kind.startswith("events"))
        out = cluster.kubectl("get", listed, *scope, "-l", selector, "-o", "name", "--ignore-not-found").stdout
        found += out.split()
    return found


def test_template_passes_server_side_dry_run(cluster: Cluster, k8s_namespace: str) -> None:
    release = _release()
    manifest = render("--set", "metrics.prometheusUrl=http://prometheus:9090", release=release, namespace=k8s_namespace)
    cluster.kubectl("apply", "--dry-run=server", "-n", k8s_namespace, "-f", "-", input=manifest)


def test_install_upgrade_uninstall_in_a_restricted_namespace(cluster: Cluster, restricted_namespace: str) -> None:
    namespace, release = restricted_namespace, _release()
    env = cluster.env

    # The namespace really enforces `restricted`: a pod without the security context is refused.
    refused = cluster.kubectl("run", "unrestricted", "--image=x", "-n", namespace, "--dry-run=server", check=False)
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr

    try:
        helm("install", release, str(CHART), "-n", namespace, *TRY_OUT, "--wait", "--timeout", "4m", env=env)
        # Gateway 2, workers 2, operators 2 (leader and standby), PostgreSQL 1: all admitted and Running.
        _assert_running(cluster, namespace, release, expected=7)
        password = _secret_value(cluster, namespace, f"{release}-aiplane-postgresql", "password")
        pii_key = _secret_value(cluster, namespace, f"{release}-aiplane-pii", "key")

        helm(
            "upgrade", release, str(CHART), "-n", namespace, *TRY_OUT, "--reuse-values",
            "--set", "worker.replicas=3", "--wait", "--timeout", "4m", env=env,
        )  # fmt: skip
        _assert_running(cluster, namespace, release, expected=8)
        status = json.loads(helm("status", release, "-n", namespace, "-o", "json", env=env).stdout)
        assert status["version"] == 2
        assert status["info"]["status"] == "deployed"
        # The bundled store's password and the PII key survive the upgrade (new ones would lock the engine out of
        # its store, and strand every PII token made so far).
        assert _secret_value(cluster, namespace, f"{release}-aiplane-postgresql", "password") == password
        assert _secret_value(cluster, namespace, f"{release}-aiplane-pii", "key") == pii_key

        # The audit verify CronJob's pod is admitted under `restricted` too: run it now rather than at 03:17 (kwok
        # completes a Job's pods without running them; the command itself is tested in tests/aiplane).
        cronjob = f"cronjob/{release}-aiplane-audit-verify"
        cluster.kubectl("create", "job", "verify-now", f"--from={cronjob}", "-n", namespace)

        def verified() -> None:
            job = json.loads(cluster.kubectl("get", "job", "verify-now", "-n", namespace, "-o", "json").stdout)
            assert job["status"].get("succeeded") == 1, job["status"]

        assert_eventually(verified, timeout=INSTALL_TIMEOUT_S, interval=1.0)

        # An upgrade that turns a part off removes its objects (helm deletes what the new manifest lacks).
        audit_objects = [cronjob, f"networkpolicy/{release}-aiplane-audit-verify-egress"]
        assert _existing(cluster, namespace, audit_objects) == audit_objects
        helm(
            "upgrade", release, str(CHART), "-n", namespace, *TRY_OUT, "--reuse-values",
            "--set", "auditVerify.enabled=false", "--wait", "--timeout", "4m", env=env,
        )  # fmt: skip
        assert json.loads(helm("status", release, "-n", namespace, "-o", "json", env=env).stdout)["version"] == 3
        assert_eventually(lambda: _existing(cluster, namespace, audit_objects) == [], timeout=60, interval=0.5)
    finally:
        helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "4m", env=env, check=False)

    # Only the PII key stays, on purpose (helm.sh/resource-policy: keep): the store's tokens open with nothing else.
    pii_secret = f"secret/{release}-aiplane-pii"

    def only_the_pii_key_left() -> None:
        assert _leftovers(cluster, namespace, release) == [pii_secret]

    assert_eventually(only_the_pii_key_left, timeout=INSTALL_TIMEOUT_S, interval=1.0)
    # Installed again under the same name, the release takes the kept key up (its tokens open again).
    try:
        helm("install", release, str(CHART), "-n", namespace, *TRY_OUT, env=env)
        assert _secret_value(cluster, namespace, f"{release}-aiplane-pii", "key") == pii_key
    finally:
        helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "4m", env=env, check=False)
    cluster.kubectl("delete", pii_secret, "-n", namespace)

    def nothing_left() -> None:
        assert _leftovers(cluster, namespace, release) == []

    assert_eventually(nothing_left, timeout=INSTALL_TIMEOUT_S, interval=1.0)
