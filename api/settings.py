"""Settings of the gateway: timeouts, limits and retention of idempotency keys.

Plain values with defaults that suit ``aiplane dev``; the CLI builds one from its own settings and flags, and
``GatewaySettings.from_env`` takes the ones an operator sets by environment (``AIPLANE_IDEMPOTENCY_TTL``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.durations import parse_duration

MiB = 1024 * 1024
#: How long Idempotency-Keys are kept, as a duration (e.g. 24h, 90m, 7d); the chart sets it from
#: ``gateway.idempotencyTTL``.
IDEMPOTENCY_TTL_ENV = "AIPLANE_IDEMPOTENCY_TTL"


def positive_duration(text: str) -> timedelta:
    """A duration such as 24h, 90m or 7d, longer than zero (a TTL); ``ValueError`` saying what is wrong otherwise."""
    value = parse_duration(text)
    if value <= timedelta(0):
        raise ValueError(f"must be longer than 0, got {text!r}")
    return value


class GatewaySettings(BaseModel):
    """What the gateway needs besides the engine."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    idempotency_ttl: timedelta = Field(
        default=timedelta(hours=24),
        gt=timedelta(0),
        description="How long an Idempotency-Key and its response are kept.",
    )
    idempotency_in_flight_timeout: timedelta = Field(
        default=timedelta(minutes=5),
        gt=timedelta(0),
        description="A request still in flight after this long is taken as abandoned; its key may be claimed again.",
    )
    sync_wait_default: float = Field(
        default=30.0, gt=0, description="Seconds a mode=sync submission waits for the result when ?wait= is not given."
    )
    sync_wait_max: float = Field(default=60.0, gt=0, description="Upper bound of ?wait= (larger values are capped).")
    sync_poll_interval: float = Field(
        default=0.05, gt=0, description="Seconds between looks at the task while a sync request waits."
    )
    max_body_bytes: int = Field(default=10 * MiB, gt=0, description="Larger request bodies are refused with 413.")
    predict_timeout: float = Field(default=30.0, gt=0, description="Seconds a model call may take before 504.")
    predict_connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to connect to a model endpoint.")
    predict_max_connections: int = Field(
        default=256, gt=0, description="Connections the shared model client keeps open at most."
    )
    api_key_cache_ttl: float = Field(
        default=30.0,
        ge=0,
        description="Seconds a verified API key is trusted without a database look-up (a revocation takes effect "
        "within this time in other processes; at once in this one). 0 looks every key up on every request.",
    )
    access_log: bool = Field(default=True, description="Log one structured line per request.")
    public_base_url: str = Field(
        default="", description="Prefix of Location headers (e.g. https://api.example.com); empty gives a path."
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **values: Any) -> GatewaySettings:
        """Settings from ``values`` plus what the environment sets (``IDEMPOTENCY_TTL_ENV``); a value the
        environment gets wrong raises ``ValueError`` naming the variable."""
        env = os.environ if environ is None else environ
        if text := env.get(IDEMPOTENCY_TTL_ENV, "").strip():
            try:
                ttl = positive_duration(text)
            except ValueError as error:
                raise ValueError(f"{IDEMPOTENCY_TTL_ENV}: {error}") from None
            values.setdefault("idempotency_ttl", ttl)
        return cls(**values)

    @model_validator(mode="after")
    def _waits_fit(self) -> GatewaySettings:
        if self.sync_wait_max >= self.idempotency_in_flight_timeout.total_seconds():
            # Otherwise a sync request still waiting could see its Idempotency-Key taken over by a retry.
            raise ValueError("sync_wait_max must be shorter than idempotency_in_flight_timeout")
        if self.sync_wait_default > self.sync_wait_max:
            raise ValueError("sync_wait_default must not exceed sync_wait_max")
        return self
