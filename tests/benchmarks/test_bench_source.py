"""The Kafka source benchmark still runs at its smoke size on the test broker; its figures are not checked here
(timings are never asserted), only that each comparison has samples on both sides and a finite ratio."""

from __future__ import annotations

import math

import pytest

from benchmarks import bench_source
from tests.fixtures.kafka import Kafka


def test_source_benchmark_runs(kafka: Kafka, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPLANE_BENCH_SCALE", "smoke")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap_servers)
    comparisons = bench_source.run()
    assert len(comparisons) == 3
    for comparison in comparisons:
        assert comparison.rate
        assert len(comparison.subject_s) == len(comparison.baseline_s) == bench_source.Sizes.default().rounds
        assert all(s > 0 for s in comparison.subject_s + comparison.baseline_s)
        assert math.isfinite(comparison.ratio)
        assert "of baseline" in comparison.report()
