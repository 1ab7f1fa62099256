"""Settings of the gateway: timeouts, limits and retention of idempotency keys.

Plain values with defaults that suit ``aiplane dev``; the CLI builds one from its own settings and flags.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, model_validator

MiB = 1024 * 1024


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

    @model_validator(mode="after")
    def _waits_fit(self) -> GatewaySettings:
        if self.sync_wait_max >= self.idempotency_in_flight_timeout.total_seconds():
            # Otherwise a sync request still waiting could see its Idempotency-Key taken over by a retry.
            raise ValueError("sync_wait_max must be shorter than idempotency_in_flight_timeout")
        if self.sync_wait_default > self.sync_wait_max:
            raise ValueError("sync_wait_default must not exceed sync_wait_max")
        return self
