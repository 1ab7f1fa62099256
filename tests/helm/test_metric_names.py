"""Every metric that a dashboard panel, an alert rule or a runbook names is one that aiplane's code defines, or one
of the few named in EXTERNAL: the guard that keeps the chart's observability and the code in step.

The definitions are prometheus-client objects registered at import: a fresh process imports every module of
aiplane's packages and prints its registry's exposition (families without samples included), plus the
registry of the verdict ``aiplane audit verify`` writes or pushes. No component runs, so this is quick; the
live counterpart (test_observability.py) scrapes running processes and has Prometheus parse every expression.
"""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache

from prometheus_client import generate_latest

from aiplane.cli import audit_metrics
from policies.audit import Verification
from tests.helm.chart import REPO_ROOT
from tests.helm.promql import (
    EXTERNAL,
    alert_expressions,
    dashboard_expressions,
    exported_series,
    expressions,
    metric_names,
)

PACKAGES = ("aiplane", "engine", "api", "operators", "connectors", "policies")
# Pages that name metrics in prose: a runbook's query must name a metric that exists too.
DOCS = ("runbooks.md", "operations.md", "policies.md", "models.md", "connectors.md", "api.md")

_IMPORT_ALL = """
import importlib, pkgutil, sys
import prometheus_client
for package in sys.argv[1:]:
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, prefix=package + "."):
        if info.name.rsplit(".", 1)[-1] != "__main__" and ".migrations." not in info.name:
            importlib.import_module(info.name)
sys.stdout.write(prometheus_client.generate_latest().decode())
"""


@cache
def defined() -> frozenset[str]:
    """The series names aiplane's modules define, as a scrape would show them."""
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, *PACKAGES],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    verdict = generate_latest(audit_metrics(Verification(records=0, last=None, problems=()))).decode()
    return frozenset(exported_series(proc.stdout) | exported_series(verdict))


def test_the_registry_holds_every_component() -> None:
    names = defined()
    for prefix in ("aiplane_gateway_", "aiplane_engine_", "aiplane_connector_", "aiplane_policy_", "aiplane_operator_"):
        assert any(name.startswith(prefix) for name in names), prefix


def test_every_panel_and_alert_names_only_defined_metrics() -> None:
    known = defined() | EXTERNAL.keys()
    unknown = {name: sorted(metric_names(expr) - known) for name, expr in expressions().items()}
    assert {name: missing for name, missing in unknown.items() if missing} == {}


def test_every_metric_named_in_the_docs_is_defined() -> None:
    # Prose may name a histogram by its family (aiplane_x_seconds) rather than one of its series.
    known = defined() | {name.removesuffix("_bucket") for name in defined()} | EXTERNAL.keys()
    for page in DOCS:
        text = (REPO_ROOT / "docs" / page).read_text()
        named = set(re.findall(r"\b(aiplane_[a-z][a-z0-9_]*[a-z0-9])\b", text))
        assert named - known == set(), page


def test_external_metrics_are_used() -> None:
    used = set().union(*(metric_names(expr) for expr in expressions().values()))
    assert EXTERNAL.keys() <= used, "drop what no expression reads any more"


def test_the_metrics_of_issue_8_are_on_the_dashboards_and_alerts() -> None:
    panels = set().union(*(metric_names(expr) for expr in dashboard_expressions().values()))
    alerts = set().union(*(metric_names(expr) for expr in alert_expressions().values()))
    assert {
        "aiplane_engine_tasks_finished_total",
        "aiplane_engine_task_duration_seconds_bucket",
        "aiplane_engine_approvals_decided_total",
        "aiplane_operator_model_traffic_weight_percent",
        "aiplane_operator_model_rollbacks_total",
        "aiplane_policy_decisions_total",
        "aiplane_policy_masked_values_total",
    } <= panels
    assert {"aiplane_operator_model_rollbacks_total", "kube_job_status_failed"} <= alerts
