"""Judging canary measurements against a Model's thresholds, and the drift index."""

from __future__ import annotations

import math

import pytest

from crds.model import Analysis
from operators.model.analysis import Measurements, judge, psi

THRESHOLDS = Analysis(max_error_rate=0.05, max_p99_latency_ms=500, max_drift=0.2, min_requests=20)


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift() -> None:
    stable = {"auto": 50.0, "property": 30.0, "health": 20.0}
    assert psi(stable, {k: v * 3 for k, v in stable.items()}) == pytest.approx(0.0)
    small = psi(stable, {"auto": 45.0, "property": 33.0, "health": 22.0})
    large = psi(stable, {"auto": 10.0, "property": 30.0, "health": 60.0})
    assert 0 < small < 0.1
    assert large > 0.2
    # By hand: sum (a - e) * ln(a / e).
    expected = sum((a - e) * math.log(a / e) for e, a in ((0.5, 0.1), (0.3, 0.3), (0.2, 0.6)))
    assert large == pytest.approx(expected)


def test_psi_stays_finite_when_the_canary_predicts_a_class_stable_never_did() -> None:
    assert math.isfinite(psi({"auto": 10.0}, {"auto": 5.0, "health": 5.0}))
    assert psi({}, {"auto": 1.0}) == 0.0


def test_too_few_requests_is_no_verdict() -> None:
    verdict = judge(THRESHOLDS, Measurements(requests=19, errors=19, p99_ms=9000, drift=5))
    assert verdict.passed is None
    assert "19 of the 20" in verdict.describe()


@pytest.mark.parametrize(
    ("measurements", "metric", "value"),
    [
        (Measurements(100, 6, 100, 0.0), "error-rate", 0.06),
        (Measurements(100, 0, 501, 0.0), "p99-latency-ms", 501),
        (Measurements(100, 0, 100, 0.25), "drift-psi", 0.25),
    ],
)
def test_each_threshold_fails_the_canary_by_name(measurements: Measurements, metric: str, value: float) -> None:
    verdict = judge(THRESHOLDS, measurements)
    assert verdict.passed is False
    assert verdict.metric == metric
    assert verdict.value == pytest.approx(value)


def test_within_every_threshold_passes_and_reports_the_figures() -> None:
    verdict = judge(THRESHOLDS, Measurements(100, 5, 500, None))
    assert verdict.passed is True
    assert "error rate 0.050" in verdict.describe()
    assert "drift not measured" in verdict.describe()


def test_error_rate_is_capped_at_one_when_extrapolated_counts_disagree() -> None:
    verdict = judge(THRESHOLDS, Measurements(requests=21.8, errors=22.0, p99_ms=10, drift=None))
    assert verdict.passed is False
    assert verdict.value == 1.0
