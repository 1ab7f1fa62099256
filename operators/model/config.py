"""Settings of the Model operator, from the environment (the chart sets them on the operator Deployment)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    # Image that runs `bentoml serve` when a Model names none; it must hold the Models' services. aiplane's own
    # image (the Containerfile's, the chart's default) holds bentoml and the shipped planners.
    serving_image: str | None = "ghcr.io/aiplane/aiplane:0.1.0"
    # Prometheus that scrapes the gateway's per-version model call metrics; unset: canaries advance on time
    # alone, and status says that no analysis ran.
    prometheus_url: str | None = None
    # How often a Model with a canary is looked at (steps, analysis); the canary's interval is what paces it.
    rollout_tick_s: float = 5.0
    # Threads (and connections) for the blocking client calls: applies and status writes of many Models at once.
    api_threads: int = 32
    # Publish the URLs a Model's aiplane.io/endpoint-urls annotation names in status.endpoints, in place of its
    # Services'. A test-only knob (pods on simulated nodes serve nothing): with it on, whoever may edit a Model
    # could send the gateway's model traffic, and the callers' data in it, to any URL. Off, the annotation is
    # ignored with a warning; the chart never turns it on.
    endpoint_urls_annotation: bool = False

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            serving_image=os.environ.get("AIPLANE_SERVING_IMAGE", cls.serving_image) or None,
            prometheus_url=os.environ.get("AIPLANE_PROMETHEUS_URL") or None,
            rollout_tick_s=float(os.environ.get("AIPLANE_ROLLOUT_TICK_S", cls.rollout_tick_s)),
            api_threads=int(os.environ.get("AIPLANE_OPERATOR_API_THREADS", cls.api_threads)),
            endpoint_urls_annotation=os.environ.get("AIPLANE_ENDPOINT_URLS_ANNOTATION", "").lower() == "true",
        )
