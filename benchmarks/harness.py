"""Timing helpers for the benchmarks: interleaved rounds, so load spikes hit subject and baseline alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Comparison:
    """Samples of the subject and the baseline, in seconds (per call, per request, per step...).

    ``quantile``: which quantile of each side's samples is compared (0.5, the median, by default; 0.99 for a p99
    of per-request latencies). ``rate``: the samples are seconds per operation of a throughput measurement; the
    report then also shows operations per second and the subject's throughput as a share of the baseline's.
    ``cpu_s``: the CPU seconds per operation that the subject's and the baseline's server processes spent over
    the measured rounds, when known: on a shared machine a server may not get a whole core, and CPU time says
    what a request costs wherever its wall time went.
    """

    name: str
    subject_s: list[float]
    baseline_s: list[float]
    quantile: float = 0.5
    rate: bool = False
    cpu_s: tuple[float, float] | None = None

    @property
    def subject(self) -> float:
        return percentile(self.subject_s, self.quantile)

    @property
    def baseline(self) -> float:
        return percentile(self.baseline_s, self.quantile)

    @property
    def ratio(self) -> float:
        """Subject time over baseline time at ``quantile``: how many times slower the subject is."""
        return self.subject / self.baseline

    def report(self) -> str:
        if self.rate:
            return (
                f"{self.name}: subject {1 / self.subject:.0f} req/s, baseline {1 / self.baseline:.0f} req/s, "
                f"throughput {100 / self.ratio:.1f}% of baseline, ratio {self.ratio:.2f}x{self._cpu()}"
            )
        label = "" if self.quantile == 0.5 else f"p{self.quantile * 100:g} "
        return (
            f"{self.name}: subject {label}{self.subject * 1e6:.1f} µs, baseline {label}{self.baseline * 1e6:.1f} µs, "
            f"ratio {self.ratio:.2f}x"
        )

    def _cpu(self) -> str:
        if self.cpu_s is None:
            return ""
        subject, baseline = self.cpu_s
        return f"; server CPU per request: subject {subject * 1e3:.3f} ms, baseline {baseline * 1e3:.3f} ms"


def percentile(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0 <= q <= 1) of ``samples``, interpolated linearly between the closest ranks."""
    if not samples:
        raise ValueError("no samples")
    if q == 0.5:
        return statistics.median(samples)
    ordered = sorted(samples)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def compare(
    name: str, subject: Callable[[], object], baseline: Callable[[], object], rounds: int = 15, per_round: int = 20
) -> Comparison:
    """Time ``subject`` and ``baseline`` in alternating rounds; each sample is the mean of ``per_round`` calls."""
    subject_s: list[float] = []
    baseline_s: list[float] = []
    for _ in range(rounds):
        for fn, samples in ((baseline, baseline_s), (subject, subject_s)):
            start = time.perf_counter()
            for _ in range(per_round):
                fn()
            samples.append((time.perf_counter() - start) / per_round)
    return Comparison(name, subject_s, baseline_s)
