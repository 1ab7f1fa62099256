"""The operator benchmark still runs at its smoke size on the test cluster; its figures are not checked here
(timings are never asserted), only that every Model was measured on both sides."""

from __future__ import annotations

import math

import pytest

from benchmarks import bench_operator
from tests.fixtures.cluster import Cluster


def test_operator_benchmark_runs(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPLANE_BENCH_SCALE", "smoke")
    comparisons = bench_operator.run()
    assert [c.quantile for c in comparisons] == [0.99, 0.99]
    for comparison in comparisons:
        assert len(comparison.subject_s) == len(comparison.baseline_s) == bench_operator.Sizes.default().models
        assert all(s > 0 for s in comparison.subject_s + comparison.baseline_s)
        assert math.isfinite(comparison.ratio)
        assert "p99" in comparison.report()
    assert "operator peak RSS" in comparisons[1].report()
