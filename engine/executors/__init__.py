"""Step executors: what a worker runs for model, connector and rules steps (approvals run no executor)."""
