"""Agent steps: a planner Model proposes actions toward a goal; the engine checks, runs and records each one.

``loop.AgentExecutor`` is the step executor; ``records`` keeps the per-proposal checkpoints and decision records.
The planner contract is ``crds.planner``.
"""
