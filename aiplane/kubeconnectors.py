"""Connectors and Secrets from the cluster, for the engine's workers in-cluster: a ``ConnectorResolver`` that
watches the Connectors of one namespace (their ``spec``, as ``kubectl apply`` left it) and a ``SecretResolver``
that reads Secret keys through the API, briefly cached.

Both are the engine's interfaces (``engine.executors.resolvers``); ``aiplane dev`` keeps its static ones.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import kubernetes
import pydantic

from aiplane.kubewatch import NamespaceWatch
from crds.connector import ConnectorSpec

log = logging.getLogger(__name__)
PLURAL = "connectors"


class KubeConnectorResolver:
    """Connector specs by name, kept current by a watch (``start``/``stop``)."""

    def __init__(self, client: kubernetes.client.ApiClient, namespace: str, watch_timeout_s: int = 60) -> None:
        self._specs: dict[str, ConnectorSpec] = {}
        self._lock = threading.Lock()
        self._watch = NamespaceWatch(
            client, namespace, PLURAL, on_list=self._listed, on_event=self._changed, watch_timeout_s=watch_timeout_s
        )

    def connector(self, name: str) -> ConnectorSpec | None:
        with self._lock:
            return self._specs.get(name)

    def start(self, synced_timeout_s: float = 30.0) -> KubeConnectorResolver:
        self._watch.start(synced_timeout_s)
        return self

    def stop(self) -> None:
        self._watch.stop()

    @staticmethod
    def _parse(body: dict[str, Any]) -> ConnectorSpec | None:
        try:
            return ConnectorSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError:
            log.warning("ignoring a Connector whose spec does not parse", extra={"connector": body["metadata"]["name"]})
            return None

    def _listed(self, items: list[dict[str, Any]]) -> None:
        parsed = {str(item["metadata"]["name"]): self._parse(item) for item in items}
        with self._lock:
            self._specs = {name: spec for name, spec in parsed.items() if spec is not None}

    def _changed(self, type_: str, body: dict[str, Any]) -> None:
        name = str(body["metadata"]["name"])
        spec = None if type_ == "DELETED" else self._parse(body)
        with self._lock:
            if spec is None:
                self._specs.pop(name, None)
            else:
                self._specs[name] = spec


class KubeSecretResolver:
    """Secret keys of one namespace, read when asked and kept ``ttl_s`` seconds (a rotated Secret is seen after
    that); None when the Secret or key is not there, which the executors report as a missing secret."""

    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        namespace: str,
        ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = kubernetes.client.CoreV1Api(client)
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[float, dict[str, str] | None]] = {}
        self._lock = threading.Lock()

    def secret(self, name: str, key: str) -> str | None:
        data = self._data(name)
        return None if data is None else data.get(key)

    def _data(self, name: str) -> dict[str, str] | None:
        now = self.clock()
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        try:
            secret = self.core.read_namespaced_secret(name, self.namespace)
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                raise
            data = None
        else:
            decoded = {key: _decode(value) for key, value in (secret.data or {}).items()}
            for key in [k for k, v in decoded.items() if v is None]:
                log.warning("secret key is not UTF-8 text; treated as absent", extra={"secret": name, "key": key})
            data = {key: value for key, value in decoded.items() if value is not None}
        with self._lock:
            self._cache[name] = (now, data)
        return data


def _decode(value: str | bytes) -> str | None:
    try:
        return base64.b64decode(value).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
