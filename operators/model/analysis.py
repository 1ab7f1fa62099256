"""Canary analysis from live metrics: error rate, p99 latency and prediction drift (PSI) of the canary, read from
Prometheus' HTTP API, judged against the Model's thresholds.

Traffic, errors and latency come from the model-call histograms (by namespace, model, version and outcome) of
both paths to a model: the gateway's synchronous predict calls (``aiplane_gateway_model_call_duration_seconds``)
and the engine's model steps (``aiplane_engine_model_call_duration_seconds``), with the same buckets, so their
sum is one histogram. Drift comes from the gateway's ``aiplane_gateway_model_predictions_total`` (by namespace,
model, version and predicted class). The window is the canary's step interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from crds.model import Analysis, Model
from operators.model.rollout import Verdict, parse_duration

CALLS = "aiplane_gateway_model_call_duration_seconds"
ENGINE_CALLS = "aiplane_engine_model_call_duration_seconds"
PREDICTIONS = "aiplane_gateway_model_predictions_total"
FAILED_OUTCOMES = "error|timeout|unreachable"
# Smoothing for classes one side never predicted, so PSI stays finite (the usual choice in credit scoring).
_PSI_EPSILON = 1e-4


def psi(expected: Mapping[str, float], actual: Mapping[str, float]) -> float:
    """Population stability index of ``actual`` (canary) against ``expected`` (stable), over their classes."""
    classes = set(expected) | set(actual)
    total_e, total_a = sum(expected.values()), sum(actual.values())
    if total_e <= 0 or total_a <= 0:
        return 0.0
    index = 0.0
    for cls in classes:
        e = max(expected.get(cls, 0.0) / total_e, _PSI_EPSILON)
        a = max(actual.get(cls, 0.0) / total_a, _PSI_EPSILON)
        index += (a - e) * math.log(a / e)
    return index


@dataclass(frozen=True)
class Measurements:
    requests: float
    errors: float
    p99_ms: float | None
    drift: float | None


def judge(thresholds: Analysis, m: Measurements) -> Verdict:
    """The verdict on one set of measurements; each failing metric is named with its value and threshold."""
    if m.requests < thresholds.min_requests:
        return Verdict(None, detail=f"canary served {m.requests:.0f} of the {thresholds.min_requests} requests needed")
    # Prometheus extrapolates each increase() on its own, so errors can come out a hair above requests.
    error_rate = min(1.0, m.errors / m.requests) if m.requests > 0 else 0.0
    if error_rate > thresholds.max_error_rate:
        return Verdict(
            False, "error-rate", round(error_rate, 4), thresholds.max_error_rate,
            f"{m.errors:.0f} of {m.requests:.0f} requests failed",
        )  # fmt: skip
    if m.p99_ms is not None and m.p99_ms > thresholds.max_p99_latency_ms:
        return Verdict(False, "p99-latency-ms", round(m.p99_ms, 1), thresholds.max_p99_latency_ms)
    if m.drift is not None and m.drift > thresholds.max_drift:
        return Verdict(False, "drift-psi", round(m.drift, 4), thresholds.max_drift)
    parts = [f"error rate {error_rate:.3f}", f"p99 {m.p99_ms:.0f} ms" if m.p99_ms is not None else "p99 n/a"]
    parts.append(f"psi {m.drift:.3f}" if m.drift is not None else "drift not measured")
    return Verdict(True, detail=", ".join(parts) + f" over {m.requests:.0f} requests")


def _window(interval: str) -> str:
    # Prometheus needs a range of at least a couple of scrapes to compute a rate.
    seconds = max(parse_duration(interval).total_seconds(), 15.0)
    return f"{int(seconds)}s"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class PrometheusAnalyzer:
    """Reads the canary's measurements from Prometheus' HTTP API (``/api/v1/query``)."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    async def _vector(self, client: httpx.AsyncClient, query: str) -> list[tuple[dict[str, str], float]]:
        response = await client.get(f"{self.url}/api/v1/query", params={"query": query})
        response.raise_for_status()
        body = response.json()
        results = []
        for item in body.get("data", {}).get("result", []):
            value = float(item["value"][1])
            if not math.isnan(value):
                results.append((item.get("metric", {}), value))
        return results

    async def _scalar(self, client: httpx.AsyncClient, query: str) -> float | None:
        values = await self._vector(client, query)
        return values[0][1] if values else None

    async def measure(self, namespace: str, model: str, stable: str, canary: str, interval: str) -> Measurements:
        w = _window(interval)
        owner = f'namespace="{_quote(namespace)}",model="{_quote(model)}"'
        sel = f'{owner},version="{_quote(canary)}"'

        # Both histograms in one selector: their series add up (same labels, same buckets).
        counts = f'__name__=~"{CALLS}_count|{ENGINE_CALLS}_count",{sel}'
        buckets = f'__name__=~"{CALLS}_bucket|{ENGINE_CALLS}_bucket",{sel}'
        failed = f'{counts},outcome=~"{FAILED_OUTCOMES}"'
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            requests = await self._scalar(client, f"sum(increase({{{counts}}}[{w}]))") or 0.0
            errors = await self._scalar(client, f"sum(increase({{{failed}}}[{w}]))")
            p99_s = await self._scalar(client, f"histogram_quantile(0.99, sum by (le) (rate({{{buckets}}}[{w}])))")
            by_class = f'sum by (class) (increase({PREDICTIONS}{{{owner},version="%s"}}[{w}]))'
            canary_classes = await self._vector(client, by_class % _quote(canary))
            stable_classes = await self._vector(client, by_class % _quote(stable))
        drift = None
        if canary_classes and stable_classes:
            drift = psi(
                {m.get("class", ""): v for m, v in stable_classes}, {m.get("class", ""): v for m, v in canary_classes}
            )
        return Measurements(
            requests=requests, errors=errors or 0.0, p99_ms=p99_s * 1000 if p99_s is not None else None, drift=drift
        )

    async def __call__(self, model: Model, stable: str, canary: str) -> Verdict:
        spec = model.spec
        assert spec.canary is not None
        try:
            measured = await self.measure(
                str(model.metadata.get("namespace") or ""),
                str(model.metadata.get("name")),
                stable,
                canary,
                spec.canary.interval,
            )
        except (httpx.HTTPError, ValueError, KeyError) as error:
            # An unreachable Prometheus holds the rollout where it is: never promote, never roll back, blind.
            return Verdict(None, detail=f"analysis unavailable: Prometheus at {self.url}: {error}")
        return judge(spec.canary.analysis, measured)
