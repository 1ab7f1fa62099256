"""Prometheus metrics of agent steps (``aiplane_engine_agent_*``), beside the engine's own."""

from __future__ import annotations

from prometheus_client import Counter

PROPOSALS = Counter(
    "aiplane_engine_agent_proposals_total",
    "Planner proposals of agent steps, by workflow and decision (allowed, denied, invalid, done, escalated, limit).",
    ["workflow", "decision"],
)
ACTIONS = Counter(
    "aiplane_engine_agent_actions_total",
    "Actions agent steps ran, by workflow and outcome (succeeded, failed after the action's retries).",
    ["workflow", "outcome"],
)
RUNS = Counter(
    "aiplane_engine_agent_runs_total",
    "Agent steps that ended, by workflow and how (done, escalated, limit).",
    ["workflow", "outcome"],
)
