"""Where enforcement points get Policies from: a thread-safe set that answers ``effective(target)`` from a cache.

The set is filled once from manifests (``aiplane dev``: ``PolicySet(policies)``) or kept current by a watch on
the cluster (``policies.sources_kube``). Every change clears the cache, so the next call after a change sees it;
between changes a call costs one dictionary lookup.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from crds.policy import Policy
from policies.effective import EffectivePolicy, Target, effective, namespace_of

PolicyKey = tuple[str, str]  # (namespace, name)


def key_of(policy: Policy) -> PolicyKey:
    return (namespace_of(policy), str(policy.metadata.get("name", "")))


class PolicySet:
    """The Policies in force, by (namespace, name), and each target's effective policy."""

    def __init__(self, policies: Iterable[Policy] = ()) -> None:
        self._lock = threading.Lock()
        self._policies: dict[PolicyKey, Policy] = {key_of(p): p for p in policies}
        self._cache: dict[tuple[str, str, str, tuple[tuple[str, str], ...]], EffectivePolicy] = {}
        #: Bumped on every change; lets a caller tell whether what it derived is still current.
        self.revision = 0

    def policies(self) -> tuple[Policy, ...]:
        with self._lock:
            return tuple(self._policies[k] for k in sorted(self._policies))

    def effective(self, target: Target) -> EffectivePolicy:
        key = target.key()
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        with self._lock:
            policies = list(self._policies.values())
            revision = self.revision
        result = effective(policies, target)
        with self._lock:
            # A change that landed meanwhile cleared the cache; the result computed before it must not refill it.
            if revision == self.revision:
                self._cache[key] = result
        return result

    def replace(self, policies: Iterable[Policy]) -> None:
        fresh = {key_of(p): p for p in policies}
        with self._lock:
            self._policies = fresh
            self._changed()

    def put(self, policy: Policy) -> None:
        with self._lock:
            self._policies[key_of(policy)] = policy
            self._changed()

    def remove(self, key: PolicyKey) -> None:
        with self._lock:
            if self._policies.pop(key, None) is not None:
                self._changed()

    def _changed(self) -> None:
        self.revision += 1
        self._cache = {}
