"""Where enforcement points get Policies from: a thread-safe set that answers ``effective(target)`` from a cache.

The set is filled once from manifests (``aiplane dev``: ``PolicySet(policies)``) or kept current by a watch on
the cluster (``policies.sources_kube``). Every change clears the cache, so the next call after a change sees it;
between changes a call costs one dictionary lookup.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from crds.policy import Policy
from policies.effective import EffectivePolicy, Target, effective, namespace_of

PolicyKey = tuple[str, str]  # (namespace, name)
Listener = Callable[[tuple[Policy, ...]], None]
log = logging.getLogger(__name__)


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
        self._listeners: list[Listener] = []

    def on_change(self, listener: Listener) -> None:
        """Call ``listener`` with all the Policies now and after every change: for enforcement points that derive
        their own state from Policies (token buckets, residency pins) instead of asking ``effective`` per call.

        Listeners run on the thread that made the change (the watch's, in a cluster): state confined to an event
        loop should be handed over with ``loop.call_soon_threadsafe``."""
        self._listeners.append(listener)
        listener(self.policies())

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
        self._notify()

    def put(self, policy: Policy) -> None:
        with self._lock:
            self._policies[key_of(policy)] = policy
            self._changed()
        self._notify()

    def remove(self, key: PolicyKey) -> None:
        with self._lock:
            if self._policies.pop(key, None) is None:
                return
            self._changed()
        self._notify()

    def _changed(self) -> None:
        self.revision += 1
        self._cache = {}

    def _notify(self) -> None:
        current = self.policies()
        for listener in list(self._listeners):
            try:
                listener(current)
            except Exception:  # one broken consumer must not keep the others (or the watch) from the change
                log.exception("a policy change listener failed")
