"""Prometheus metrics of the engine, named ``aiplane_engine_<what>_<unit>``.

Registered once per process in the default registry (prometheus-client refuses duplicate names), so every
Engine and Worker in a process shares them, which is also what a scrape of that process should see. Gauges
that describe the store (queue length, pending approvals, DLQ size) are refreshed by the workers' maintenance
loop from the database, so any worker's /metrics shows the whole store.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STEP_DURATION = Histogram(
    "aiplane_engine_step_duration_seconds",
    "Duration of step attempts, by workflow, step, step type and outcome.",
    ["workflow", "step", "type", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
RETRIES = Counter(
    "aiplane_engine_retries_total",
    "Step attempts that failed and were scheduled to be retried.",
    ["workflow", "step"],
)
DEFERRALS = Counter(
    "aiplane_engine_deferrals_total",
    "Step attempts held back before calling the downstream (circuit open or retry budget spent).",
    ["workflow", "step"],
)
DEAD_LETTERS = Counter(
    "aiplane_engine_dead_letters_total",
    "Tasks that went to the dead-letter queue.",
    ["workflow"],
)
SLA_BREACHES = Counter(
    "aiplane_engine_sla_breaches_total",
    "Tasks that passed their SLA deadline before finishing.",
    ["workflow"],
)
QUEUE_LENGTH = Gauge(
    "aiplane_engine_queue_length_steps",
    "Runnable step runs waiting for a worker, by priority class.",
    ["priority"],
)
PENDING_APPROVALS = Gauge("aiplane_engine_pending_approvals_count", "Approvals waiting for a decision.")
DLQ_SIZE = Gauge("aiplane_engine_dlq_size_tasks", "Dead-lettered tasks not yet replayed.")
CALLBACKS = Counter(
    "aiplane_engine_callbacks_total",
    "Attempts to POST a finished task to its callback URL, by outcome (delivered, retrying, failed).",
    ["outcome"],
)
MODEL_CALL_DURATION = Histogram(
    "aiplane_engine_model_call_duration_seconds",
    "Duration of model steps' calls to a Model's version, by the Model's namespace, model, version and outcome "
    "(ok, rejected, error, timeout, unreachable): the gateway's aiplane_gateway_model_call_duration_seconds for "
    "the engine's path, with the same labels and buckets, so a canary's analysis adds the two.",
    ["namespace", "model", "version", "outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TASKS_FINISHED = Counter(
    "aiplane_engine_tasks_finished_total",
    "Tasks that reached an end state, by workflow, outcome (succeeded, failed, rejected, cancelled, "
    "dead_lettered) and path (human: a person decided one of the task's approvals; automated: nobody did), "
    "counted once the transaction that ends the task has committed.",
    ["workflow", "outcome", "path"],
)
TASK_DURATION = Histogram(
    "aiplane_engine_task_duration_seconds",
    "Time from submission to the end state (time to resolution, approvals' waits included), by workflow and outcome.",
    ["workflow", "outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400, 259200, 604800),
)
APPROVALS_DECIDED = Counter(
    "aiplane_engine_approvals_decided_total",
    "Approvals that reached a verdict, by workflow and outcome (approved, rejected, expired).",
    ["workflow", "outcome"],
)


def task_finished(workflow: str, outcome: str, *, human: bool, seconds: float) -> None:
    """Count a task that reached its end state ``outcome`` ``seconds`` after it was submitted."""
    TASKS_FINISHED.labels(workflow, outcome, "human" if human else "automated").inc()
    TASK_DURATION.labels(workflow, outcome).observe(max(seconds, 0.0))
