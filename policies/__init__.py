"""Policy evaluation at call time, and the audit log's records. Imports only ``crds`` (pure where it can be).

- ``effective``: which Policies govern a Workflow, Model or Connector, and their deterministic combination.
- ``sources`` / ``sources_kube``: the Policies in force, from manifests or a watch on the cluster, with a cache.
- ``approvals``: approval rules (CEL over a task) and the requirement the triggered ones add up to.
- ``audit``: hash-chained audit records and their verification (``engine.store.audit`` stores them).
- PII detection and masking, access, residency and rate limits live in their own modules beside these.
"""
