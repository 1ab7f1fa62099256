"""The Model operator's metrics: traffic weight per live version, and rollbacks, with series that go away with
their version or Model."""

from __future__ import annotations

import uuid
from datetime import timedelta

from prometheus_client import REGISTRY

from operators import metrics
from operators.model import rollout
from operators.model.rollout import Verdict
from tests.operators.test_rollout import CANARY, T0, at

AT_50 = at(1)


def _weight(namespace: str, model: str, version: str) -> float | None:
    labels = {"namespace": namespace, "model": model, "version": version}
    return REGISTRY.get_sample_value("aiplane_operator_model_traffic_weight_percent", labels)


def _rollbacks(namespace: str, model: str) -> float | None:
    labels = {"namespace": namespace, "model": model}
    return REGISTRY.get_sample_value("aiplane_operator_model_rollbacks_total", labels)


def test_weights_follow_the_live_versions() -> None:
    ns = f"ns-{uuid.uuid4().hex[:8]}"
    metrics.model_weights(ns, "claims", {"1.0.0": 100})
    assert _weight(ns, "claims", "1.0.0") == 100
    metrics.model_weights(ns, "claims", {"1.0.0": 90, "2.0.0": 10})
    assert (_weight(ns, "claims", "1.0.0"), _weight(ns, "claims", "2.0.0")) == (90, 10)
    # Promoted: the old version is no longer live, and its series goes rather than staying at its last weight.
    metrics.model_weights(ns, "claims", {"2.0.0": 100})
    assert (_weight(ns, "claims", "1.0.0"), _weight(ns, "claims", "2.0.0")) == (None, 100)
    metrics.forget_model(ns, "claims")
    assert _weight(ns, "claims", "2.0.0") is None


def test_rollbacks_start_at_zero_and_go_with_the_model() -> None:
    ns = f"ns-{uuid.uuid4().hex[:8]}"
    metrics.canary_seen(ns, "claims")
    # At 0 before the first rollback: increase() over a range sees the step from 0 to 1.
    assert _rollbacks(ns, "claims") == 0
    metrics.rolled_back(ns, "claims")
    metrics.canary_seen(ns, "claims")
    assert _rollbacks(ns, "claims") == 1
    metrics.forget_model(ns, "claims")
    assert _rollbacks(ns, "claims") is None
    metrics.forget_model(ns, "claims")  # twice: nothing left to drop, no error


def test_a_reconcile_that_rolls_back_counts_once() -> None:
    ns = f"ns-{uuid.uuid4().hex[:8]}"
    metrics.model_reconciled(ns, "claims", {"1.0.0": 50, "2.0.0": 50}, canary=True, event="RolloutStarted")
    assert _rollbacks(ns, "claims") == 0
    failed = Verdict(False, "error-rate", 0.31, 0.05, "31 of 100 requests failed")
    decision = rollout.advance(CANARY, AT_50, now=T0 + timedelta(seconds=1), canary_ready=True, verdict=failed)
    assert decision.event is not None
    metrics.model_reconciled(ns, "claims", {"1.0.0": 100}, canary=True, event=decision.event.reason)
    metrics.model_reconciled(ns, "claims", {"1.0.0": 100}, canary=True, event=None)
    assert _rollbacks(ns, "claims") == 1
    assert (_weight(ns, "claims", "1.0.0"), _weight(ns, "claims", "2.0.0")) == (100, None)
    # Without a canary there is no counter at all.
    metrics.model_reconciled(ns, "plain", {"1.0.0": 100}, canary=False, event=None)
    assert _rollbacks(ns, "plain") is None
