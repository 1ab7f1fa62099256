"""Workflow definitions as the engine runs them: registration and versions, the step graph, CEL."""
