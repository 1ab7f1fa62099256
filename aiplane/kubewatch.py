"""List, then watch, one kind of aiplane.io object in one namespace, in a daemon thread: what the in-cluster syncs
(``kubeworkflows``, ``kubeconnectors``) build on. A failed watch (410 Gone, a restarting apiserver) lists again."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import kubernetes

log = logging.getLogger(__name__)
GROUP, VERSION = "aiplane.io", "v1alpha1"
Body = dict[str, Any]


class NamespaceWatch:
    """Calls ``on_list`` with every object after each (re)list, then ``on_event(type, object)`` per change."""

    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        namespace: str,
        plural: str,
        *,
        on_list: Callable[[list[Body]], None],
        on_event: Callable[[str, Body], None],
        watch_timeout_s: int = 60,
    ) -> None:
        self.api = kubernetes.client.CustomObjectsApi(client)
        self.namespace = namespace
        self.plural = plural
        self.on_list = on_list
        self.on_event = on_event
        self.watch_timeout_s = watch_timeout_s
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._watch: Any = None
        self._thread = threading.Thread(target=self._run, name=f"{plural}-{namespace}", daemon=True)

    def start(self, synced_timeout_s: float = 30.0) -> None:
        self._thread.start()
        if not self._synced.wait(synced_timeout_s):
            raise TimeoutError(f"could not list {self.plural} in {self.namespace} within {synced_timeout_s}s")

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(self.watch_timeout_s + 5)

    def _run(self) -> None:
        lister: Callable[..., Any] = self.api.list_namespaced_custom_object
        while not self._stop.is_set():
            try:
                listing = lister(GROUP, VERSION, self.namespace, self.plural)
                self.on_list(list(listing.get("items", [])))
                self._synced.set()
                # The watch helper is untyped upstream.
                new_watch: Callable[[], Any] = kubernetes.watch.Watch
                self._watch = new_watch()
                for event in self._watch.stream(
                    lister, GROUP, VERSION, self.namespace, self.plural,
                    resource_version=listing["metadata"]["resourceVersion"], timeout_seconds=self.watch_timeout_s,
                ):  # fmt: skip
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.on_event(event["type"], event["object"])
                    if self._stop.is_set():
                        break
            except Exception:  # the watch must outlive any one failure
                if self._stop.is_set():
                    break
                log.warning("watch failed; listing again", extra={"plural": self.plural}, exc_info=True)
                self._stop.wait(1.0)
