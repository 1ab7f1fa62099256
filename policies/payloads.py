"""Payload logging: a sampled share of tasks logs each step's input and output, for debugging and drift analysis.

The rate is the effective policy's ``payloadLogging.sampleRate`` for the workflow. Sampling is by task, not by
step: a task is in or out as a whole (its id hashed to [0, 1) against the rate), so a logged task shows its whole
path, and the same task is decided the same way in every worker.

A Policy that selects a Model samples the calls to that Model too (``model_rate_for``): a model step is logged
when its task falls in the Model's rate or the workflow's (the same hash, so a task in the workflow's share logs
every step), with the step's output masked by the Model's ``pii`` as well; and the gateway's predictions
(``prediction``), which have no task, are sampled at random per call, their request and answer masked by the
Model's ``pii`` (the caller's answer is not).

What is logged has already been through the workflow's PII masking (the engine masks inputs at intake and outputs
in the worker, before this sees them), so payload logs are masked like everything else. They go to the
``aiplane.payloads`` logger, one structured record per step: route that logger where payload logs are kept (with
their own retention, ``retention.payloadLogs``). Unless ``keep`` is set: then each record goes there (an engine
keeps them in its store, ``engine.store.payload_logs``, where retention purges them and a GDPR erasure removes a
subject's), and the log line only says one was kept, without ``input`` and ``output``, so no copy of the payloads
is left outside aiplane's reach.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policies.masking import WorkflowMasking

LOGGER = "aiplane.payloads"
#: What a kept record's log line carries instead of the payloads.
KEPT_FIELDS = ("input", "output")


def sampled(task_id: str, rate: float) -> bool:
    """Whether ``task_id`` falls in the sampled share ``rate`` (0-1); the same answer everywhere."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    point = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big") / 2**64
    return point < rate


class PayloadLog:
    """Logs a sampled share of tasks' step payloads; ``rate_for(workflow)`` gives the rate (None or 0: none).
    ``model_rate_for(model)`` the rate of a Model's calls, and ``model_masking`` masks by a Model's ``pii`` (its
    name where a workflow's goes), for Policies that select Models."""

    def __init__(
        self,
        rate_for: Callable[[str], float | None],
        logger: logging.Logger | None = None,
        *,
        model_rate_for: Callable[[str], float | None] | None = None,
        model_masking: WorkflowMasking | None = None,
    ) -> None:
        self.rate_for = rate_for
        self.model_rate_for = model_rate_for
        self.model_masking = model_masking
        self.log = logger or logging.getLogger(LOGGER)
        #: Where records go instead of the log line's payloads (``engine.store.payload_logs.PayloadLogStore.keep``);
        #: None: the log line carries them.
        self.keep: Callable[[dict[str, Any]], None] | None = None

    def _emit(self, message: str, record: dict[str, Any]) -> None:
        keep = self.keep
        if keep is None:
            self.log.info(message, extra=record)
            return
        try:
            keep(record)
        except Exception:  # a debugging aid must not fail the step or the call it samples
            self.log.warning("%s not kept", message, exc_info=True)
            return
        self.log.info(message, extra={**{k: v for k, v in record.items() if k not in KEPT_FIELDS}, "kept": True})

    def step(
        self,
        *,
        tenant: str,
        workflow: str,
        task_id: str,
        step: str,
        input: Any,
        output: Any,
        model: str | None = None,
    ) -> bool:
        """Log one step's (already masked) input and output if its task is sampled; returns whether it was.
        ``model``: the Model a model step called, whose Policies' rate and masking apply too."""
        rate = self.rate_for(workflow) or 0.0
        if model is not None and self.model_rate_for is not None:
            rate = max(rate, self.model_rate_for(model) or 0.0)
        if not rate or not sampled(task_id, rate):
            return False
        extra: dict[str, Any] = {}
        if model is not None and self.model_rate_for is not None:
            extra["model"] = model
            if self.model_masking is not None:  # a Model's pii masks its calls' payloads, on top of the workflow's
                input = self.model_masking.input(tenant, model, input)
                output = self.model_masking.output(tenant, model, step, output)
        self._emit(
            "step payload",
            {
                "tenant": tenant,
                "workflow": workflow,
                "task_id": task_id,
                "step": step,
                "input": input,
                "output": output,
                "sample_rate": rate,
                **extra,
            },
        )
        return True

    def prediction(self, *, tenant: str, model: str, version: str, request: Any, answer: Any, rate: float) -> None:
        """Log one gateway prediction (sampled by the caller), masked by the Model's ``pii``."""
        if self.model_masking is not None:
            request = self.model_masking.input(tenant, model, request)
            answer = self.model_masking.output(tenant, model, "predict", answer)
        self._emit(
            "prediction payload",
            {
                "tenant": tenant,
                "model": model,
                "version": version,
                "input": request,
                "output": answer,
                "sample_rate": rate,
            },
        )
