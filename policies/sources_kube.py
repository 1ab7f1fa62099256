"""Policies from the cluster: a list-then-watch that keeps a ``PolicySet`` current, so a Policy change applies to
new calls as soon as the apiserver announces it (typically well under a second).

A Policy that no longer parses (a newer schema than this process knows, say) keeps its last good version in
force and is logged: dropping it would quietly loosen governance, and the Policy operator reports the error on the
Policy's status.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import kubernetes
import pydantic

from crds.policy import Policy
from policies.sources import PolicyKey, PolicySet, key_of

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = "aiplane.io", "v1alpha1", "policies"


def _key(body: dict[str, Any]) -> PolicyKey:
    metadata = body.get("metadata") or {}
    return (str(metadata.get("namespace") or "default"), str(metadata.get("name", "")))


def parse(body: dict[str, Any]) -> Policy:
    """A Policy object from the apiserver (status and server-set metadata included) as the typed model."""
    return Policy.model_validate({k: v for k, v in body.items() if k != "status"})


class KubePolicyWatch:
    """Keeps ``policies`` equal to the cluster's Policies (one namespace, or all), from a daemon thread."""

    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        policies: PolicySet | None = None,
        *,
        namespace: str | None = None,
        watch_timeout_s: int = 60,
        parse: Callable[[dict[str, Any]], Policy] = parse,
    ) -> None:
        """``parse``: the Policy schema this process knows (a cluster's CRD may be newer than the process)."""
        self.api = kubernetes.client.CustomObjectsApi(client)
        self._parse = parse
        self.policies = policies if policies is not None else PolicySet()
        self.namespace = namespace
        self.watch_timeout_s = watch_timeout_s
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._watch: Any = None
        self._thread = threading.Thread(target=self._run, name=f"policies-{namespace or 'all'}", daemon=True)

    def start(self, synced_timeout_s: float = 30.0) -> KubePolicyWatch:
        self._thread.start()
        if not self._synced.wait(synced_timeout_s):
            raise TimeoutError(f"could not list Policies within {synced_timeout_s}s")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(self.watch_timeout_s + 5)

    def _lister(self) -> tuple[Callable[..., Any], tuple[str, ...]]:
        if self.namespace is None:
            return self.api.list_cluster_custom_object, (GROUP, VERSION, PLURAL)
        return self.api.list_namespaced_custom_object, (GROUP, VERSION, self.namespace, PLURAL)

    def _parsed(self, body: dict[str, Any]) -> Policy | None:
        try:
            return self._parse(body)
        except pydantic.ValidationError as error:
            key = _key(body)
            kept = next((p for p in self.policies.policies() if key_of(p) == key), None)
            log.warning(
                "policy %s/%s (generation %s) does not parse; %s",
                *key,
                (body.get("metadata") or {}).get("generation"),
                f"its last good version (generation {kept.metadata.get('generation')}) stays in force"
                if kept is not None
                else "this process never had a good version of it: it governs nothing here",
                extra={"policy": f"{key[0]}/{key[1]}", "error": str(error)},
            )
            return None

    def _run(self) -> None:
        lister, args = self._lister()
        while not self._stop.is_set():
            try:
                listing = lister(*args)
                current = {_key(item): item for item in listing.get("items", [])}
                known = {k: p for k, p in ((k, self._parsed(item)) for k, item in current.items()) if p is not None}
                # Keep the last good version of those that no longer parse, drop the deleted ones.
                previous = {key_of(p): p for p in self.policies.policies()}
                for key in current.keys() - known.keys():
                    if key in previous:
                        known[key] = previous[key]
                self.policies.replace(known.values())
                self._synced.set()
                # The watch helper is untyped upstream.
                new_watch: Callable[[], Any] = kubernetes.watch.Watch
                self._watch = new_watch()
                for event in self._watch.stream(
                    lister, *args,
                    resource_version=listing["metadata"]["resourceVersion"], timeout_seconds=self.watch_timeout_s,
                ):  # fmt: skip
                    body = event["object"]
                    if event["type"] == "DELETED":
                        self.policies.remove(_key(body))
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        policy = self._parsed(body)
                        if policy is not None:
                            self.policies.put(policy)
                    if self._stop.is_set():
                        break
            except Exception:  # the watch must outlive any one failure (410 Gone, a restarting apiserver)
                if self._stop.is_set():
                    break
                log.warning("policy watch failed; listing again", exc_info=True)
                self._stop.wait(1.0)
