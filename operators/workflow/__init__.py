"""The Workflow operator: validates what the schema cannot and publishes the definition's version."""
