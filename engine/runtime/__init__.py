"""The durable state machine: every state change of tasks, steps and approvals, each in one transaction."""
