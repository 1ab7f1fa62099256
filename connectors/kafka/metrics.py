"""Prometheus metrics of the Kafka connectors, named ``aiplane_connector_<what>_<unit>``.

Registered once per process in the default registry, like the engine's: a consumer Deployment's /metrics (or the
process of ``aiplane dev``) shows every source it runs, told apart by the ``connector`` label.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "aiplane_connector_messages_total",
    "Messages a Kafka source consumed, by outcome: accepted (a new task), duplicate (the task existed already), "
    "dead_lettered (sent to the dead-letter topic).",
    ["connector", "outcome"],
)
CONSUMER_LAG = Gauge(
    "aiplane_connector_consumer_lag_messages",
    "Messages on a partition the source has not committed yet (high watermark minus committed position), "
    "as of its last poll.",
    ["connector", "topic", "partition"],
)
BATCH_DURATION = Histogram(
    "aiplane_connector_batch_duration_seconds",
    "Time from a poll's return to its offsets' commit: submission, dead letters and the commit.",
    ["connector"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STALLS = Counter(
    "aiplane_connector_stalls_total",
    "Batches a source could not complete (store or broker unavailable, workflow missing) and will read again.",
    ["connector", "reason"],
)
WAITING = Gauge(
    "aiplane_connector_waiting_messages",
    "Messages a Kafka source left on its topic at its last poll, to be read again, by what it waits on: "
    "rate-limited (the tenant's rate limit) or quota-exceeded (the tenant's quota of tasks in flight); 0 once "
    "it takes them.",
    ["connector", "reason"],
)
RECORDS_SENT = Counter(
    "aiplane_connector_records_sent_total",
    "Records a Kafka sink published, by topic.",
    ["topic"],
)
