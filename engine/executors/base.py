"""The executor protocol: a step attempt gets a ``StepContext`` and returns a ``StepOutcome`` or raises.

Raise ``engine.errors.StepError`` for a failed attempt (its ``retryable`` flag and ``kind`` drive retries) or
``StepDeferredError`` when the downstream was not called at all (circuit open, retry budget spent).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from crds.workflow import Step


@dataclass(frozen=True, kw_only=True)
class StepContext:
    task_id: str
    tenant: str
    workflow: str
    workflow_version: str
    step: Step
    #: Attempt number of this step run, 1-based, replays included.
    attempt: int
    #: The same for every attempt of this step run: send it downstream as ``Idempotency-Key``.
    idempotency_key: str
    input: Any
    #: Outputs of the task's completed steps, by step name (the latest run of each).
    steps: Mapping[str, Any]
    vars: Mapping[str, Any]
    #: Seconds one attempt may take (the step's ``timeout``).
    timeout: float
    deadline: datetime | None = None
    #: The step run and the lease it is held under: an executor that writes progress of its own (an agent's
    #: checkpoints) writes it only while this lease is current.
    step_run_id: str = ""
    lease_token: str = ""
    #: The submitting request's W3C traceparent (child tasks continue its trace).
    trace_context: str | None = None
    #: The task's own region (None: none): model and connector calls outside it are refused (``policies.residency``).
    region: str | None = None
    #: Calls of this attempt that Policies governed and allowed, as the executor found them (``{"model": name,
    #: "policies": [versions]}``); the worker records each as a ``policy``/``allow`` record with the attempt's result.
    allowed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_retry(self) -> bool:
        return self.attempt > 1


@dataclass(frozen=True, kw_only=True)
class StepOutcome:
    output: Any = None
    #: Values to merge into the task's ``vars`` (rules steps).
    vars: Mapping[str, Any] = field(default_factory=dict)
    #: The step to continue with instead of the usual order (a rules branch or default).
    next_step: str | None = None
    #: What produced the output, for the task's lineage (model name, version, endpoint; connector): recorded with
    #: the step's completion event (``policies.lineage``).
    lineage: Mapping[str, Any] | None = None


class StepExecutor(Protocol):
    def execute(self, ctx: StepContext) -> StepOutcome: ...
