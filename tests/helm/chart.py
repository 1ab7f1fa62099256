"""Helpers for the chart's tests: the pinned helm binary, rendering, and the objects a render holds."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "aiplane"
BUILD_TOOLS = REPO_ROOT / "hack" / "build-tools.sh"
# What every install in the tests uses: the bundled PostgreSQL (no Secret to prepare) and a Kafka to point at.
TRY_OUT = ("--set", "postgresql.bundled.enabled=true", "--set", "kafka.bootstrapServers=kafka.example:9092")


@functools.cache
def helm_binary() -> Path:
    """The helm that hack/build-tools.sh builds and caches (a no-op when it is cached)."""
    subprocess.run(["bash", str(BUILD_TOOLS), "helm"], check=True, timeout=3600)
    out = subprocess.run(
        ["bash", str(BUILD_TOOLS), "--print-path", "helm"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(out)


def helm(
    *args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm_binary()), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}")
    return proc


def base_values(values: Sequence[str]) -> tuple[str, ...]:
    """The try-out values, unless ``values`` bring a values file of their own (which names its own store)."""
    return () if "-f" in values else TRY_OUT


def render(*values: str, release: str = "test", namespace: str = "aiplane") -> str:
    """``helm template`` with ``values`` (``--set k=v`` pairs or ``-f file``) over the try-out values."""
    return helm("template", release, str(CHART), "--namespace", namespace, *base_values(values), *values).stdout


def objects(manifest: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def pod_template(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template of a workload (a CronJob's is in its Job template), None for anything else."""
    if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        template: dict[str, Any] = doc["spec"]["template"]
        return template
    if doc["kind"] == "CronJob":
        job_template: dict[str, Any] = doc["spec"]["jobTemplate"]["spec"]["template"]
        return job_template
    return None


def pod_specs(docs: Sequence[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload in a render."""
    for doc in docs:
        template = pod_template(doc)
        if template is not None:
            yield f"{doc['kind']}/{doc['metadata']['name']}", template["spec"]
