"""The benchmarks still run: each at its smoke size (``AIPLANE_BENCH_SCALE=smoke``) gives comparisons with
positive, finite ratios. Their figures are not checked here (timings are never asserted); ``python -m benchmarks``
prints them."""

from __future__ import annotations

import math

import pytest

from benchmarks import bench_engine, bench_predict, bench_submit
from benchmarks.harness import Comparison, percentile


@pytest.fixture(autouse=True)
def smoke_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPLANE_BENCH_SCALE", "smoke")


def check(comparisons: list[Comparison], count: int) -> None:
    assert len(comparisons) == count
    for comparison in comparisons:
        assert comparison.subject_s, comparison.name
        assert comparison.baseline_s, comparison.name
        assert math.isfinite(comparison.ratio), comparison.name
        assert comparison.ratio > 0, comparison.name
        assert "ratio" in comparison.report()


def test_submit_benchmark_runs() -> None:
    comparisons = bench_submit.run()
    check(comparisons, 4)  # gateway and durable append, each vs the bare app, with FULL and NORMAL
    assert all(c.rate for c in comparisons)
    assert all("req/s" in c.report() for c in comparisons)
    # Linux's /proc gives each server's CPU time: every report says what a request cost each side.
    for comparison in comparisons:
        assert comparison.cpu_s is not None, comparison.name
        assert all(0 <= cpu < 1 for cpu in comparison.cpu_s), comparison.report()
        assert "server CPU per request" in comparison.report()


def test_engine_benchmark_runs_on_sqlite() -> None:
    check(bench_engine.run(postgres=False), 1)


@pytest.mark.integration
def test_engine_benchmark_runs_on_postgres() -> None:
    # Starts its own throwaway cluster (it changes the cluster's fsync settings, so not the session's).
    check(bench_engine.run(), 3)


@pytest.mark.integration
def test_predict_benchmark_runs() -> None:
    comparisons = bench_predict.run()
    check(comparisons, 3)
    assert [(c.quantile, c.rate) for c in comparisons] == [(0.5, False), (0.99, False), (0.5, True)]
    assert "p99" in comparisons[1].report()
    assert "req/s" in comparisons[2].report()


@pytest.mark.parametrize(
    ("quantile", "expected"),
    [(0.5, 2.5), (0.0, 1.0), (1.0, 4.0), (0.99, 3.97)],
)
def test_percentile_interpolates_between_ranks(quantile: float, expected: float) -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], quantile) == pytest.approx(expected)


def test_rate_comparison_reports_throughput() -> None:
    report = Comparison("submit", subject_s=[0.002, 0.002], baseline_s=[0.001, 0.001], rate=True).report()
    assert report == "submit: subject 500 req/s, baseline 1000 req/s, throughput 50.0% of baseline, ratio 2.00x"


def test_rate_comparison_reports_server_cpu_when_known() -> None:
    report = Comparison("s", subject_s=[0.002], baseline_s=[0.001], rate=True, cpu_s=(0.0015, 0.0003)).report()
    assert report.endswith("; server CPU per request: subject 1.500 ms, baseline 0.300 ms")


def test_quantile_comparison_labels_the_quantile() -> None:
    report = Comparison("predict", subject_s=[0.001, 0.003], baseline_s=[0.001, 0.001], quantile=0.99).report()
    assert report.startswith("predict: subject p99 2980.0 µs, baseline p99 1000.0 µs")
