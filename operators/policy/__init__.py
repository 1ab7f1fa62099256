"""The Policy operator: reports what each Policy selects and whatever keeps it from being enforced as written."""
