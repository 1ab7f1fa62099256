"""The PromQL the chart ships (dashboards and alert rules) and the metric names it selects, and the series a
Prometheus exposition declares: what tests/helm/test_metric_names.py and test_observability.py compare."""

from __future__ import annotations

import json
import re

import yaml

from tests.helm.chart import CHART

# Grafana's variables, as Grafana substitutes them before Prometheus sees the query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
# Series a metric family of each type exposes (prometheus-client's exposition).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
# Series the chart reads that other exporters provide, and which one.
EXTERNAL = {"kube_job_status_failed": "kube-state-metrics (a failed run of the chart's audit verify CronJob)"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
PROMQL_WORDS |= {"group_left", "group_right"}


def dashboard_expressions() -> dict[str, str]:
    found = {}
    for path in sorted((CHART / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found[f"{path.stem}: {panel['title']} ({target['refId']})"] = target["expr"]
    return found


def alert_expressions() -> dict[str, str]:
    groups = yaml.safe_load((CHART / "alerts" / "aiplane.rules.yaml").read_text())["groups"]
    return {rule.get("alert") or rule["record"]: rule["expr"] for group in groups for rule in group["rules"]}


def expressions() -> dict[str, str]:
    found = dict(dashboard_expressions())
    found.update(alert_expressions())
    for variable, value in GRAFANA_VARIABLES.items():
        found = {name: expr.replace(variable, value) for name, expr in found.items()}
    return found


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects: identifiers left once strings, matchers, ranges and grouping
    clauses are gone, other than function calls and PromQL's keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if not match.group(2) and match.group(1).lower() not in PROMQL_WORDS:
            names.add(match.group(1))
    return names


def exported_series(exposition: str) -> set[str]:
    series = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            # The text format names a counter's family with its _total (a labelled metric that has seen no
            # value yet shows only these lines, no samples).
            base = family.removesuffix("_total") if kind == "counter" else family
            series |= {base + suffix for suffix in SUFFIXES.get(kind, ("",))}
    return series
