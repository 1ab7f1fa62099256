"""Policies from files that follow the files: ``aiplane dev`` re-reads its manifests when one changes.

In a cluster the Policies come from a watch (``policies.sources_kube``); on one machine they come from manifest
files, and an edit applies without a restart: ``PolicyFileWatch`` looks at the files' modification times and sizes
every ``interval`` seconds (a ``stat`` per file, nothing read while nothing changed), and when any differs, or a
file appears or goes, reads the manifests again and replaces the ``PolicySet``'s Policies in one swap. The
enforcement points ask the set per call or rebuild on its change, so the next call sees the new Policies.

A manifest that no longer parses leaves the Policies as they were (logged, with what to fix) rather than none in
force. Only Policies follow the files: Workflows, Models and Connectors are read once at start. Every Policy part
applies on reload, one that no Policy had at start included: ``aiplane dev`` wires each enforcement point whether
or not a Policy uses it yet, as a cluster's workers do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from aiplane import manifests
from crds.policy import Policy
from policies.sources import PolicySet

log = logging.getLogger(__name__)

#: (path, mtime in ns, size) of every manifest file.
Stamp = tuple[tuple[str, int, int], ...]


def stamp(paths: Sequence[Path]) -> Stamp:
    found = []
    for file in manifests.files(paths):
        try:
            stat = file.stat()
        except OSError:  # gone between listing and stat: the next look sees it gone
            continue
        found.append((str(file), stat.st_mtime_ns, stat.st_size))
    return tuple(found)


class PolicyFileWatch:
    """Keeps ``policies`` on the Policies of the manifests under ``paths``; ``check`` looks once, ``start`` looks
    every ``interval`` seconds in a daemon thread until ``stop``. ``on_reload``: called with the new Policies."""

    def __init__(
        self,
        paths: Sequence[Path],
        policies: PolicySet,
        *,
        interval: float = 1.0,
        on_reload: Callable[[tuple[Policy, ...]], None] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.policies = policies
        self.interval = interval
        self.on_reload = on_reload
        self._seen = stamp(self.paths)
        self._failed: Stamp | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Reload when a file changed since the last look; whether the Policies were replaced."""
        now = stamp(self.paths)
        if now == self._seen:
            return False
        try:
            loaded = manifests.load(self.paths)
        except manifests.ManifestError as error:
            # Not marked seen: the next look after the fix reloads. Logged once per edit, not once per look.
            if self._failed != now:
                log.error("policy manifests not reloaded, the Policies in force stay: %s", error)
                self._failed = now
            return False
        self._seen = now
        fresh = tuple(r for r in loaded if isinstance(r, Policy))
        self.policies.replace(fresh)
        log.info("policies reloaded", extra={"policies": [p.metadata.get("name") for p in fresh]})
        if self.on_reload is not None:
            self.on_reload(fresh)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a bad look must not end the watch
                log.exception("policy file watch failed")

    def start(self) -> PolicyFileWatch:
        self._thread = threading.Thread(target=self._run, name="aiplane-policy-files", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
