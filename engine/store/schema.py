"""The engine's tables (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Core rather than the ORM: every write the engine makes is a conditional UPDATE whose row count decides who won
(lease claims, completions, decisions), and claims need ``FOR UPDATE SKIP LOCKED``; Core states these directly,
with no identity map or unit-of-work flushing in between, and its values are plain rows that cross threads safely.

The migrations under ``engine/migrations`` create exactly these tables; ``tests/engine/test_store.py`` compares
them so the two cannot drift.
"""

from __future__ import annotations

import sqlalchemy as sa

from engine.store.types import JSONText, UTCDateTime

# Deterministic constraint names: alembic can only alter or drop what it can name.
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = sa.String(26)  # ULID
NAME = sa.String(63)  # DNS-1123 label (workflow, step names)
TENANT = sa.String(253)
BLOB_REF = sa.String(80)  # "sha256:<64 hex>"

workflows = sa.Table(
    "workflows",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    # Content hash of the canonical spec: registering the same spec twice gives the same version.
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("spec", JSONText, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# Which version new tasks of a workflow get; running tasks keep the version they started with.
workflow_heads = sa.Table(
    "workflow_heads",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant", TENANT, nullable=False),
    sa.Column("workflow", NAME, nullable=False),
    sa.Column("workflow_version", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("priority", sa.String(8), nullable=False),
    # Payloads: inline canonical JSON, or a blob reference when larger than the inline limit.
    sa.Column("input", sa.Text),
    sa.Column("input_ref", BLOB_REF),
    sa.Column("result", sa.Text),
    sa.Column("result_ref", BLOB_REF),
    sa.Column("vars", JSONText, nullable=False),
    sa.Column("error", JSONText),
    sa.Column("current_step", NAME),
    # Number of step runs so far; the next one gets step_seq + 1.
    sa.Column("step_seq", sa.Integer, nullable=False),
    sa.Column("deadline", UTCDateTime),
    sa.Column("sla_breached_at", UTCDateTime),
    sa.Column("idempotency_key", sa.String(255)),
    sa.Column("request_hash", sa.String(64)),
    # W3C traceparent of the submitting request: step spans continue that trace.
    sa.Column("trace_context", sa.String(128)),
    # The rest of the submitter's descriptor: policy annotations {privacy, retention, approval}, where to call
    # back when the task ends, who submitted it, and the Idempotency-Key of the request (shown, not deduplicated
    # on: that is the expiring idempotency record's job).
    sa.Column("annotations", JSONText),
    sa.Column("callback_url", sa.String(2048)),
    sa.Column("submitted_by", TENANT),
    sa.Column("request_key", sa.String(255)),
    # The region the task's data stays in, when the submitter pinned it (narrowing its workflow's residency pin).
    sa.Column("region", sa.String(63)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    # When the task's own retention (annotations' retention) lets its data go: set when it finishes, cleared by
    # the purge that removes the data (engine.store.purge.purge_own_retention).
    sa.Column("purge_after", UTCDateTime),
    sa.ForeignKeyConstraint(["workflow", "workflow_version"], ["workflows.name", "workflows.version"]),
    sa.UniqueConstraint("tenant", "idempotency_key"),
    sa.Index(None, "tenant", "id"),
    sa.Index(None, "state", "deadline"),
    # A tenant's unfinished tasks, counted against its quota at intake (policies.quota): the scan stays within
    # what the quota allows, however many finished tasks the tenant has.
    sa.Index(None, "tenant", "state"),
    # Only tasks with a retention of their own are in it: the intake's inserts (purge_after NULL) never touch it.
    sa.Index(
        "ix_tasks_purge_after",
        "purge_after",
        sqlite_where=sa.text("purge_after IS NOT NULL"),
        postgresql_where=sa.text("purge_after IS NOT NULL"),
    ),
)

step_runs = sa.Table(
    "step_runs",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("task_id", ID, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("name", NAME, nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("priority", sa.String(8), nullable=False),
    # Attempts ever started (also the attempt number); attempt_base is where the current retry budget began,
    # so a replay grants a fresh budget without renumbering history.
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("attempt_base", sa.Integer, nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=False),
    sa.Column("lease_owner", sa.String(128)),
    # Fencing token: a fresh value per claim; only the holder of the current token may complete or fail the run.
    sa.Column("lease_token", ID),
    sa.Column("lease_expires_at", UTCDateTime),
    sa.Column("next_run_at", UTCDateTime),
    # Queue order: next_run_at plus a per-priority delay (aging; see engine.runtime.queue).
    sa.Column("sort_at", UTCDateTime),
    sa.Column("output", sa.Text),
    sa.Column("output_ref", BLOB_REF),
    sa.Column("error", JSONText),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("task_id", "seq"),
    sa.Index(None, "state", "sort_at"),
    sa.Index(None, "state", "lease_expires_at"),
)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("step_run_id", ID, sa.ForeignKey("step_runs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("task_id", ID, nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("worker", sa.String(128)),
    # running | succeeded | failed | retrying | lost | deferred | abandoned
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("error", JSONText),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.Index(None, "step_run_id"),
    sa.Index(None, "task_id"),
)

approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("task_id", ID, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("step_run_id", ID, sa.ForeignKey("step_runs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("tenant", TENANT, nullable=False),
    sa.Column("step", NAME, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("roles", JSONText, nullable=False),
    sa.Column("users", JSONText, nullable=False),
    sa.Column("quorum", sa.Integer, nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("decisions", JSONText, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("decided_at", UTCDateTime),
    sa.Index(None, "state", "expires_at"),
    sa.Index(None, "tenant", "state"),
    sa.Index(None, "task_id"),
)

# An agent step's decision record and checkpoint: one row per planner proposal, written before its action runs
# and finished after, so a retried or resumed agent never runs a finished action again (engine.agent).
agent_actions = sa.Table(
    "agent_actions",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("task_id", ID, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("step_run_id", ID, sa.ForeignKey("step_runs.id", ondelete="CASCADE"), nullable=False),
    # 1-based proposal number within the step run.
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("tenant", TENANT, nullable=False),
    # The planner's answer as it came (action, arguments, confidence, reasoning, done, escalate, result).
    sa.Column("proposal", JSONText, nullable=False),
    # allowed | denied | invalid | done | escalated
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    # The Policies (and rule) behind the decision.
    sa.Column("policies", JSONText, nullable=False),
    # running | succeeded | failed | denied | invalid | done | escalated
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("observation", sa.Text),
    sa.Column("observation_ref", BLOB_REF),
    sa.Column("error", JSONText),
    # Model-call units spent: the planner call plus, once run, the action.
    sa.Column("cost", sa.Float, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    # A workflow action's child task, once submitted.
    sa.Column("child_task_id", ID),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.UniqueConstraint("step_run_id", "seq"),
    sa.Index(None, "task_id"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("tenant", TENANT, primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # in_flight | done
    sa.Column("response", JSONText),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # An in-flight claim older than this was abandoned (its caller died); the key may be claimed again.
    sa.Column("locked_until", UTCDateTime),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Index(None, "expires_at"),
)

# The outbox: written in the same transaction as the state change it reports, relayed to the bus afterwards.
events = sa.Table(
    "events",
    metadata,
    # Insertion order for readers; ``id`` is the stable identity consumers deduplicate on.
    sa.Column("seq", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("id", ID, nullable=False, unique=True),
    sa.Column("task_id", ID),
    sa.Column("tenant", TENANT),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("payload", JSONText, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("published_at", UTCDateTime),
    sa.Index(None, "task_id", "seq"),
    sa.Index(
        "ix_events_unpublished",
        "seq",
        sqlite_where=sa.text("published_at IS NULL"),
        postgresql_where=sa.text("published_at IS NULL"),
    ),
)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("task_id", ID, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("tenant", TENANT, nullable=False),
    sa.Column("step_run_id", ID, nullable=False),
    sa.Column("step", NAME, nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("last_error", JSONText),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("replayed_at", UTCDateTime),
    sa.Index(None, "tenant", "created_at"),
    sa.Index(None, "task_id"),
)

# Webhooks to send: a task's end, for its callback URL; written in the transaction that ends the task.
callbacks = sa.Table(
    "callbacks",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("task_id", ID, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("tenant", TENANT, nullable=False),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("payload", JSONText, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False),
    # When a worker may try next; a worker sending it pushes this out by its timeout first, so no other worker
    # sends it at the same time.
    sa.Column("next_attempt_at", UTCDateTime),
    sa.Column("last_error", JSONText),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.Index(None, "state", "next_attempt_at"),
    sa.Index(None, "task_id"),
)

# The gateway's API keys: sha256 of each key (the plaintext is shown once, never stored), mapping to a tenant, a
# principal and roles. Here, not in the gateway, so one migration history covers the whole database.
api_keys = sa.Table(
    "gateway_api_keys",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    # The first characters of the key, to tell keys apart in listings.
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("tenant", TENANT, nullable=False),
    sa.Column("principal", TENANT, nullable=False),
    sa.Column("roles", sa.String(128), nullable=False),  # comma-separated crds.base.Role values
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
)

# The audit log: append-only, hash-chained decision records (policies.audit defines the record and the chain).
# ``seq`` is the chain position, assigned by the appender under the chain lock, so a gap is a deleted record.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("id", ID, nullable=False, unique=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("subject", sa.String(512), nullable=False),
    sa.Column("decision", sa.String(32), nullable=False),
    sa.Column("tenant", TENANT),
    sa.Column("actor", TENANT),
    # Canonical JSON as hashed; kept as the exact text so verification rehashes the stored bytes.
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index(None, "kind", "at"),
    sa.Index(None, "tenant", "at"),
)

# One row (id 1): the chain's last seq and hash. Appenders lock it (FOR UPDATE) so concurrent appends make one
# chain, and verification compares it with the last record, so deleting the newest records is detected too.
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Large payloads kept in the database itself (PostgreSQL), so every gateway, worker and consumer pod reads what any
# other wrote without a shared volume (engine.store.blobs). SQLite keeps them as files beside the database.
blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("ref", BLOB_REF, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# The global token buckets of rate limits (engine.store.ratelimit): one row per tenant and priority class (``*``
# for the tenant-wide one), so every gateway replica draws from one budget. Rate and burst are not stored: they
# are the Policies', passed with each lease. ``stamp`` is the last refill in epoch seconds.
rate_buckets = sa.Table(
    "rate_buckets",
    metadata,
    sa.Column("tenant", TENANT, primary_key=True),
    sa.Column("bucket", sa.String(16), primary_key=True),
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("stamp", sa.Float, nullable=False),
    # What the last lease granted: SET expressions all read the old row, so the grant is written next to the
    # tokens it came out of, and RETURNING gives both from one statement.
    sa.Column("granted", sa.Float, nullable=False),
)

# Sampled payload logs (``policies.payloads``), kept where retention purges them and an erasure finds them.
payload_logs = sa.Table(
    "payload_logs",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant", TENANT, nullable=False),
    sa.Column("workflow", NAME),
    sa.Column("model", NAME),
    # None for a gateway prediction, which has no task.
    sa.Column("task_id", ID),
    sa.Column("record", JSONText, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index(None, "task_id"),
    sa.Index(None, "workflow", "created_at"),
)
