"""Prometheus metrics of the operators, named ``aiplane_operator_<what>_<unit>``.

The operator's /metrics (``aiplane operator --metrics-port``) serves them from prometheus-client's default
registry. Only the replica that leads (kopf peering) reconciles, so only its series move; a dashboard takes the
max over the replicas. Labels name Models and their versions, never pods or requests.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping

from prometheus_client import Counter, Gauge

MODEL_TRAFFIC_WEIGHT = Gauge(
    "aiplane_operator_model_traffic_weight_percent",
    "Percent of a Model's requests the gateway routes to each live version (status.endpoints): the canary's "
    "weight during a rollout, by namespace, model and version.",
    ["namespace", "model", "version"],
)
MODEL_ROLLBACKS = Counter(
    "aiplane_operator_model_rollbacks_total",
    "Canary rollouts the Model operator rolled back because the analysis failed, by namespace and model.",
    ["namespace", "model"],
)

#: The reason of the Event the rollout posts when the analysis rolls a canary back (operators.model.rollout).
ROLLED_BACK = "RolloutRolledBack"

_lock = threading.Lock()
# (namespace, model) -> the versions whose weight is exported: what to remove when a version or the Model goes.
_versions: dict[tuple[str, str], frozenset[str]] = {}


def model_weights(namespace: str, model: str, weights: Mapping[str, int]) -> None:
    """Export the Model's weights per live version; versions no longer live lose their series."""
    with _lock:
        for version in _versions.get((namespace, model), frozenset()) - weights.keys():
            MODEL_TRAFFIC_WEIGHT.remove(namespace, model, version)
        for version, weight in weights.items():
            MODEL_TRAFFIC_WEIGHT.labels(namespace, model, version).set(weight)
        _versions[(namespace, model)] = frozenset(weights)


def model_reconciled(
    namespace: str, model: str, weights: Mapping[str, int], *, canary: bool, event: str | None
) -> None:
    """What a reconcile of the Model wrote: its ``weights`` per live version, whether it has a ``canary``, and the
    reason of the rollout ``event`` it posted, if any."""
    model_weights(namespace, model, weights)
    if canary:
        canary_seen(namespace, model)
    if event == ROLLED_BACK:
        rolled_back(namespace, model)


def canary_seen(namespace: str, model: str) -> None:
    """Make the Model's rollback counter exist at 0, so that Prometheus' increase() sees its first rollback."""
    MODEL_ROLLBACKS.labels(namespace, model)


def rolled_back(namespace: str, model: str) -> None:
    MODEL_ROLLBACKS.labels(namespace, model).inc()


def forget_model(namespace: str, model: str) -> None:
    """The Model is gone: drop its series."""
    with _lock:
        for version in _versions.pop((namespace, model), frozenset()):
            MODEL_TRAFFIC_WEIGHT.remove(namespace, model, version)
    with contextlib.suppress(KeyError):  # a Model that never had a canary has no counter
        MODEL_ROLLBACKS.remove(namespace, model)
