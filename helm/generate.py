"""Writes what the chart ships but the repo already defines: its CRDs and its Grafana dashboards.

    python helm/generate.py           rewrite helm/aiplane/crds/*.yaml and helm/aiplane/dashboards/*.json
    python helm/generate.py --check   exit 1 and name the files that differ (a test runs this)

CRDs: the chart's ``crds/`` folder links to ``crds/*.yaml`` (no second copy to drift), and holds kopf's peering
CRDs that the operators' leader election needs as files: together, what ``aiplane crds`` prints. Helm installs
that folder before the templates, and never upgrades or deletes it (see docs/operations.md).

Dashboards: built with grafana-foundation-sdk, never hand-edited. Every panel queries a metric that aiplane's code
defines (tests/helm/test_metric_names.py, from the registry) and that running processes export
(tests/helm/test_observability.py, against a live gateway, worker and Prometheus).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from crds.generate import CRD_DIR
from operators import peering

CHART = Path(__file__).resolve().parent / "aiplane"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
WINDOW = "$__rate_interval"
FAILED_MODEL_OUTCOMES = "error|timeout|unreachable"
FINISHED = "aiplane_engine_tasks_finished_total"
DECISIONS = "aiplane_policy_decisions_total"
# The Jobs of the chart's audit verify CronJob (<release>-aiplane-audit-verify-<minute>), by kube-state-metrics.
AUDIT_JOBS = 'job_name=~".+-audit-verify-[0-9]+"'


# --- CRDs ----------------------------------------------------------------------------------------------------


def crd_links() -> dict[str, str]:
    """The chart's crds/ entries for aiplane's own CRDs: symlinks to ``crds/*.yaml`` (``make generate`` writes them
    from the pydantic models). Helm follows them, and ``helm package`` stores their content."""
    return {path.name: os.path.relpath(path, CHART / "crds") for path in sorted(CRD_DIR.glob("*.yaml"))}


def peering_crd_files() -> dict[str, str]:
    """kopf's peering CRDs, which only exist as Python (``operators.peering``): written as files."""
    return {f"{crd['metadata']['name']}.yaml": yaml.safe_dump(crd, sort_keys=False) for crd in peering.crds()}


# --- Dashboards ----------------------------------------------------------------------------------------------


def _query(expr: str, legend: str = "") -> gp.Dataquery:
    query = gp.Dataquery().expr(expr).datasource(DATASOURCE)
    return query.legend_format(legend) if legend else query


def _timeseries(title: str, unit: str, *queries: gp.Dataquery, description: str = "") -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).height(8).span(12)
    for ref, query in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(query.ref_id(ref))
    return panel.description(description) if description else panel


def _stat(title: str, unit: str, expr: str, description: str = "") -> stat.Panel:
    panel = stat.Panel().title(title).unit(unit).datasource(DATASOURCE).height(4).span(6)
    panel = panel.with_target(_query(expr).ref_id("A"))
    return panel.description(description) if description else panel


def _quantiles(metric: str, by: str) -> list[gp.Dataquery]:
    return [
        _query(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket[{WINDOW}])))",
            f"p{round(q * 100)} {{{{{by.split(',', maxsplit=1)[0].strip()}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def _dashboard(uid: str, title: str, description: str) -> gd.Dashboard:
    datasource = gd.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
    return (
        gd.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["aiplane"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("utc")
        .readonly()
        .with_variable(datasource)
    )


def overview() -> gd.Dashboard:
    steps = "aiplane_engine_step_duration_seconds"
    return (
        _dashboard("aiplane-overview", "aiplane / Overview", "Tasks, steps, queues, approvals, dead letters, SLAs.")
        .with_row(gd.Row("Now"))
        .with_panel(
            _stat(
                "Pending approvals",
                "short",
                "max(aiplane_engine_pending_approvals_count)",
                "Approvals waiting for a decision (tasks held by a human gate).",
            )
        )
        .with_panel(_stat("Dead-letter queue", "short", "max(aiplane_engine_dlq_size_tasks)", "Tasks not replayed."))
        .with_panel(
            _stat(
                "SLA breaches (24 h)",
                "short",
                "sum(increase(aiplane_engine_sla_breaches_total[24h]))",
                "Tasks that passed their SLA deadline before finishing.",
            )
        )
        .with_panel(
            _stat(
                "Step success (1 h)",
                "percentunit",
                f'sum(rate({steps}_count{{outcome="succeeded"}}[1h])) / sum(rate({steps}_count[1h]))',
                "Share of step attempts that succeeded.",
            )
        )
        .with_row(gd.Row("Tasks"))
        .with_panel(
            _stat(
                "Task success (1 h)",
                "percentunit",
                f'sum(rate({FINISHED}{{outcome="succeeded"}}[1h])) / sum(rate({FINISHED}[1h]))',
                "Share of the tasks that ended in the last hour that succeeded.",
            )
        )
        .with_panel(
            _stat(
                "Automation coverage (24 h)",
                "percentunit",
                f'sum(increase({FINISHED}{{path="automated"}}[24h])) / sum(increase({FINISHED}[24h]))',
                "Share of the tasks that ended without a person deciding an approval.",
            )
        )
        .with_panel(
            _stat(
                "Time to resolution p50 (24 h)",
                "s",
                "histogram_quantile(0.5, sum by (le) (increase(aiplane_engine_task_duration_seconds_bucket[24h])))",
                "From submission to the end state, approvals' waits included.",
            )
        )
        .with_panel(_stat("Tasks finished (24 h)", "short", f"sum(increase({FINISHED}[24h]))"))
        .with_row(gd.Row("Throughput"))
        .with_panel(
            _timeseries(
                "Tasks submitted / s",
                "reqps",
                _query(
                    'sum by (status) (rate(aiplane_gateway_request_duration_seconds_count{route="/v1/tasks", '
                    f'method="POST"}}[{WINDOW}]))',
                    "{{status}}",
                ),
                description="Submissions at the gateway, by HTTP status.",
            )
        )
        .with_panel(
            _timeseries(
                "Step attempts / s by outcome",
                "ops",
                _query(f"sum by (outcome) (rate({steps}_count[{WINDOW}]))", "{{outcome}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Tasks finished / s by outcome",
                "ops",
                _query(f"sum by (outcome) (rate({FINISHED}[{WINDOW}]))", "{{outcome}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Task latency per workflow",
                "s",
                *_quantiles("aiplane_engine_task_duration_seconds", "workflow"),
                description="p50/p95/p99 from submission to the end state (time to resolution).",
            )
        )
        .with_panel(
            _timeseries(
                "Automation coverage per workflow",
                "percentunit",
                _query(
                    f'sum by (workflow) (rate({FINISHED}{{path="automated"}}[1h])) '
                    f"/ sum by (workflow) (rate({FINISHED}[1h]))",
                    "{{workflow}}",
                ),
                description="Share of a workflow's tasks that ended without a person deciding an approval.",
            )
        )
        .with_panel(
            _timeseries("Step duration per workflow", "s", *_quantiles(steps, "workflow"), description="p50/p95/p99.")
        )
        .with_panel(
            _timeseries(
                "Queue length per priority",
                "short",
                _query("max by (priority) (aiplane_engine_queue_length_steps)", "{{priority}}"),
                description="Runnable steps waiting for a worker.",
            )
        )
        .with_row(gd.Row("Failures"))
        .with_panel(
            _timeseries(
                "Retries, deferrals and dead letters / s",
                "ops",
                _query(f"sum by (workflow) (rate(aiplane_engine_retries_total[{WINDOW}]))", "retry {{workflow}}"),
                _query(f"sum by (workflow) (rate(aiplane_engine_deferrals_total[{WINDOW}]))", "deferred {{workflow}}"),
                _query(
                    f"sum by (workflow) (rate(aiplane_engine_dead_letters_total[{WINDOW}]))",
                    "dead letter {{workflow}}",
                ),
                description="Deferrals: attempts held back because a circuit is open or the retry budget is spent.",
            )
        )
        .with_panel(
            _timeseries(
                "SLA breaches / h per workflow",
                "short",
                _query("sum by (workflow) (increase(aiplane_engine_sla_breaches_total[1h]))", "{{workflow}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Callbacks by outcome",
                "ops",
                _query(f"sum by (outcome) (rate(aiplane_engine_callbacks_total[{WINDOW}]))", "{{outcome}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Gateway latency",
                "s",
                *_quantiles("aiplane_gateway_request_duration_seconds", "route"),
                description="p50/p95/p99 per route.",
            )
        )
    )


def _per_version(expr: str, path: str) -> gp.Dataquery:
    return _query(expr, f"{{{{model}}}} {{{{version}}}} {path}")


def models() -> gd.Dashboard:
    # Two paths reach a model: synchronous predict through the gateway, and workflows' model steps in the workers.
    paths = (
        ("aiplane_gateway_model_call_duration_seconds", "predict"),
        ("aiplane_engine_model_call_duration_seconds", "steps"),
    )
    failed = f'outcome=~"{FAILED_MODEL_OUTCOMES}"'
    predictions = "aiplane_gateway_model_predictions_total"
    return (
        _dashboard(
            "aiplane-models", "aiplane / Models", "Model calls per model and version: predict and workflow steps."
        )
        .with_panel(
            _timeseries(
                "Requests / s per model and version",
                "reqps",
                *(_per_version(f"sum by (model, version) (rate({m}_count[{WINDOW}]))", path) for m, path in paths),
            )
        )
        .with_panel(
            _timeseries(
                "Error ratio per model and version",
                "percentunit",
                *(
                    _per_version(
                        f"sum by (model, version) (rate({m}_count{{{failed}}}[{WINDOW}])) "
                        f"/ sum by (model, version) (rate({m}_count[{WINDOW}]))",
                        path,
                    )
                    for m, path in paths
                ),
                description="Errors, timeouts and unreachable upstreams over all calls.",
            )
        )
        .with_panel(
            _timeseries("Predict latency per model and version", "s", *_quantiles(paths[0][0], "model, version")),
        )
        .with_panel(
            _timeseries("Model step latency per model and version", "s", *_quantiles(paths[1][0], "model, version")),
        )
        .with_panel(
            _timeseries(
                "Traffic weight per version (canary)",
                "percent",
                _query(
                    "max by (namespace, model, version) (aiplane_operator_model_traffic_weight_percent)",
                    "{{namespace}}/{{model}} {{version}}",
                ),
                description="Percent of a Model's requests routed to each live version (the Model operator's status).",
            )
        )
        .with_panel(
            _timeseries(
                "Canary rollbacks / h",
                "short",
                _query(
                    "sum by (namespace, model) (increase(aiplane_operator_model_rollbacks_total[1h]))",
                    "{{namespace}}/{{model}}",
                ),
                description="Rollouts the analysis rolled back (error rate, p99 latency or drift over threshold).",
            )
        )
        .with_panel(
            _timeseries(
                "Predicted class share per version (drift)",
                "percentunit",
                _query(
                    f"sum by (model, version, class) (rate({predictions}[{WINDOW}])) / ignoring (class) group_left "
                    f"sum by (model, version) (rate({predictions}[{WINDOW}]))",
                    "{{model}} {{version}} {{class}}",
                ),
                description="What the canary analysis compares (PSI of the canary's classes against the stable's).",
            )
        )
        .with_panel(
            _timeseries(
                "Calls by outcome",
                "reqps",
                *(
                    _query(f"sum by (outcome) (rate({m}_count[{WINDOW}]))", f"{{{{outcome}}}} {path}")
                    for m, path in paths
                ),
            )
        )
    )


def connectors() -> gd.Dashboard:
    messages = "aiplane_connector_messages_total"
    return (
        _dashboard("aiplane-connectors", "aiplane / Connectors", "Kafka sources and sinks.")
        .with_panel(
            _timeseries(
                "Consumer lag per connector",
                "short",
                _query("sum by (connector) (aiplane_connector_consumer_lag_messages)", "{{connector}}"),
                description="Messages not yet committed (high watermark minus committed offset).",
            )
        )
        .with_panel(
            _timeseries(
                "Dead-lettered messages / s",
                "ops",
                _query(f'sum by (connector) (rate({messages}{{outcome="dead_lettered"}}[{WINDOW}]))', "{{connector}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Messages / s by outcome",
                "ops",
                _query(f"sum by (connector, outcome) (rate({messages}[{WINDOW}]))", "{{connector}} {{outcome}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Stalled batches / s",
                "ops",
                _query(
                    f"sum by (connector, reason) (rate(aiplane_connector_stalls_total[{WINDOW}]))",
                    "{{connector}} {{reason}}",
                ),
            )
        )
        .with_panel(
            _timeseries(
                "Batch duration",
                "s",
                *_quantiles("aiplane_connector_batch_duration_seconds", "connector"),
            )
        )
        .with_panel(
            _timeseries(
                "Sink records / s per topic",
                "ops",
                _query(f"sum by (topic) (rate(aiplane_connector_records_sent_total[{WINDOW}]))", "{{topic}}"),
            )
        )
    )


def governance() -> gd.Dashboard:
    # The audit verdict comes from `aiplane audit verify` run on a schedule (the chart's CronJob) that pushes it to a
    # Pushgateway (--push-to) or writes it for node-exporter's textfile collector (--metrics-file); the CronJob's
    # failed runs come from kube-state-metrics.
    return (
        _dashboard(
            "aiplane-governance",
            "aiplane / Governance",
            "Policy decisions, masking, human gates and the audit log's integrity.",
        )
        .with_row(gd.Row("Policies"))
        .with_panel(
            _stat(
                "Policy denies (24 h)",
                "short",
                f'sum(increase({DECISIONS}{{decision="deny"}}[24h]))',
                "Submissions, calls, steps and approvals a Policy refused (access, residency, rate limits, separation "
                "of duties).",
            )
        )
        .with_panel(
            _stat(
                "Masked values (24 h)",
                "short",
                "sum(increase(aiplane_policy_masked_values_total[24h]))",
                "Personal data masked before it was stored or sent.",
            )
        )
        .with_panel(
            _stat(
                "Approvals required by Policies (24 h)",
                "short",
                f'sum(increase({DECISIONS}{{check="approval", decision="required"}}[24h]))',
                "Tasks an approval rule parked on a human approval.",
            )
        )
        .with_panel(
            _stat(
                "Failed audit verify runs",
                "short",
                f"sum(kube_job_status_failed{{{AUDIT_JOBS}}})",
                "Runs of the audit verify CronJob that failed and are still kept (kube-state-metrics).",
            )
        )
        .with_panel(
            _timeseries(
                "Policy denies / s by check",
                "ops",
                _query(f'sum by (check) (rate({DECISIONS}{{decision="deny"}}[{WINDOW}]))', "{{check}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Masked values / s by entity",
                "ops",
                _query(
                    f"sum by (entity, action) (rate(aiplane_policy_masked_values_total[{WINDOW}]))",
                    "{{entity}} {{action}}",
                ),
            )
        )
        .with_panel(
            _timeseries(
                "Approval rules' decisions / h",
                "short",
                _query(f'sum by (decision) (increase({DECISIONS}{{check="approval"}}[1h]))', "{{decision}}"),
                description="required: parked on a human; satisfied: a workflow's own approval already met the rules.",
            )
        )
        .with_panel(
            _timeseries(
                "Approvals by outcome / h",
                "short",
                _query(
                    "sum by (outcome) (increase(aiplane_engine_approvals_decided_total[1h]))",
                    "{{outcome}}",
                ),
            )
        )
        .with_row(gd.Row("Audit log"))
        .with_panel(
            _stat(
                "Audit log intact",
                "bool_yes_no",
                "min(aiplane_policy_audit_verify_status)",
                "1 when the last `aiplane audit verify` found the hash chain intact.",
            )
        )
        .with_panel(
            _stat("Audit problems", "short", "max(aiplane_policy_audit_problems)", "Tampered or missing records found.")
        )
        .with_panel(_stat("Audit records verified", "short", "max(aiplane_policy_audit_records)"))
        .with_panel(
            _stat(
                "Since the last verification",
                "s",
                "time() - max(aiplane_policy_audit_verify_timestamp_seconds)",
                "A verification that stopped running is no verification.",
            )
        )
        .with_panel(
            _timeseries(
                "Pending approvals",
                "short",
                _query("max(aiplane_engine_pending_approvals_count)", "pending"),
            )
        )
    )


DASHBOARDS: dict[str, Callable[[], gd.Dashboard]] = {
    "overview": overview,
    "models": models,
    "connectors": connectors,
    "governance": governance,
}


def dashboard_files() -> dict[str, str]:
    return {
        f"{name}.json": json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
        for name, build in DASHBOARDS.items()
    }


# --- Writing and checking ------------------------------------------------------------------------------------


def expected() -> dict[Path, str]:
    files = {CHART / "crds" / name: text for name, text in peering_crd_files().items()}
    files.update({CHART / "dashboards" / name: text for name, text in dashboard_files().items()})
    return files


def _wrong_link(path: Path, target: str) -> bool:
    return not path.is_symlink() or os.readlink(path) != target


def stale(files: dict[Path, str], links: dict[Path, str]) -> list[Path]:
    """Files and links that differ from what the generator writes, and ones in its folders it no longer writes."""
    wrong = [path for path, text in files.items() if path.is_symlink() or not path.exists() or path.read_text() != text]
    wrong += [path for path, target in links.items() if _wrong_link(path, target)]
    for folder, pattern in ((CHART / "crds", "*.yaml"), (CHART / "dashboards", "*.json")):
        wrong += [path for path in sorted(folder.glob(pattern)) if path not in files and path not in links]
    return wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed files differ")
    args = parser.parse_args(argv)
    files = expected()
    links = {CHART / "crds" / name: target for name, target in crd_links().items()}
    wrong = stale(files, links)
    if args.check:
        if wrong:
            names = ", ".join(str(path.relative_to(CHART.parent.parent)) for path in wrong)
            print(f"out of date: {names}; run: python helm/generate.py", file=sys.stderr)
            return 1
        return 0
    for path in wrong:
        path.unlink(missing_ok=True)
        if path in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(files[path])
        elif path in links:
            path.symlink_to(links[path])
    return 0


if __name__ == "__main__":
    sys.exit(main())
