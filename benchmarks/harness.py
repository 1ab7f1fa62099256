"""Timing helpers for the benchmarks: interleaved rounds, so load spikes hit subject and baseline alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Comparison:
    name: str
    subject_s: list[float]
    baseline_s: list[float]

    @property
    def ratio(self) -> float:
        """Median subject time over median baseline time: how many times slower the subject is."""
        return statistics.median(self.subject_s) / statistics.median(self.baseline_s)

    def report(self) -> str:
        subject = statistics.median(self.subject_s) * 1e6
        baseline = statistics.median(self.baseline_s) * 1e6
        return f"{self.name}: subject {subject:.1f} µs, baseline {baseline:.1f} µs, ratio {self.ratio:.2f}x"


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
