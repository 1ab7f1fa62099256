"""Payload logging: a sampled share of tasks logs each step's input and output, for debugging and drift analysis.

The rate is the effective policy's ``payloadLogging.sampleRate`` for the workflow. Sampling is by task, not by
step: a task is in or out as a whole (its id hashed to [0, 1) against the rate), so a logged task shows its whole
path, and the same task is decided the same way in every worker.

What is logged has already been through the workflow's PII masking (the engine masks inputs at intake and outputs
in the worker, before this sees them), so payload logs are masked like everything else. They go to the
``aiplane.payloads`` logger, one structured record per step: route that logger where payload logs are kept (with
their own retention, ``retention.payloadLogs``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

LOGGER = "aiplane.payloads"


def sampled(task_id: str, rate: float) -> bool:
    """Whether ``task_id`` falls in the sampled share ``rate`` (0-1); the same answer everywhere."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    point = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big") / 2**64
    return point < rate


class PayloadLog:
    """Logs a sampled share of tasks' step payloads; ``rate_for(workflow)`` gives the rate (None or 0: none)."""

    def __init__(self, rate_for: Callable[[str], float | None], logger: logging.Logger | None = None) -> None:
        self.rate_for = rate_for
        self.log = logger or logging.getLogger(LOGGER)

    def step(self, *, tenant: str, workflow: str, task_id: str, step: str, input: Any, output: Any) -> bool:
        """Log one step's (already masked) input and output if its task is sampled; returns whether it was."""
        rate = self.rate_for(workflow)
        if not rate or not sampled(task_id, rate):
            return False
        self.log.info(
            "step payload",
            extra={
                "tenant": tenant,
                "workflow": workflow,
                "task_id": task_id,
                "step": step,
                "input": input,
                "output": output,
                "sample_rate": rate,
            },
        )
        return True
