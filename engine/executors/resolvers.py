"""Where the executors learn about the world: model endpoints, connector specs, secret values.

Protocols, so the engine stays free of Kubernetes: in a cluster they read ``Model.status.endpoints``,
``Connector.spec`` and Secrets (the operators' side); in ``aiplane dev`` and tests, the static ones below.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from crds.connector import HTTP, ConnectorSpec
from crds.model import Endpoint


class ModelResolver(Protocol):
    def endpoints(self, model: str) -> Sequence[Endpoint]:
        """Live versions of a model with their URLs and traffic weights (as in ``Model.status.endpoints``)."""
        ...


class ConnectorResolver(Protocol):
    def connector(self, name: str) -> ConnectorSpec | None: ...


class SecretResolver(Protocol):
    def secret(self, name: str, key: str) -> str | None: ...


class StaticModelResolver:
    def __init__(self, models: Mapping[str, Sequence[Endpoint | Mapping[str, Any]]] | None = None) -> None:
        self.models = {
            name: [e if isinstance(e, Endpoint) else Endpoint.model_validate(e) for e in endpoints]
            for name, endpoints in (models or {}).items()
        }

    def endpoints(self, model: str) -> Sequence[Endpoint]:
        return self.models.get(model, [])


class StaticConnectorResolver:
    """Connectors by name; an ``HTTP`` block alone is accepted as shorthand for an http connector."""

    def __init__(self, connectors: Mapping[str, ConnectorSpec | HTTP | Mapping[str, Any]] | None = None) -> None:
        self.connectors: dict[str, ConnectorSpec] = {}
        for name, value in (connectors or {}).items():
            if isinstance(value, HTTP):
                spec = ConnectorSpec(type="http", http=value)
            elif isinstance(value, ConnectorSpec):
                spec = value
            else:
                spec = ConnectorSpec.model_validate(value)
            self.connectors[name] = spec

    def connector(self, name: str) -> ConnectorSpec | None:
        return self.connectors.get(name)


class StaticSecretResolver:
    def __init__(self, secrets: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.secrets = {name: dict(data) for name, data in (secrets or {}).items()}

    def secret(self, name: str, key: str) -> str | None:
        return self.secrets.get(name, {}).get(key)


class DirectorySecretResolver:
    """Secret keys mounted as files, ``<root>/<secret>/<key>`` (how the Connector operator gives a consumer pod the
    keys its Connector names, under ``AIPLANE_SECRETS_DIR``). Read on every call, so a rotated Secret that the
    kubelet has updated is seen without a restart."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def secret(self, name: str, key: str) -> str | None:
        if not name or not key or "/" in name + key or name in (".", "..") or key in (".", ".."):
            return None  # never a path outside the root
        try:
            return (self.root / name / key).read_text()
        except (OSError, UnicodeDecodeError):
            return None


def load_static_config(path: str | Path) -> tuple[StaticModelResolver, StaticConnectorResolver, StaticSecretResolver]:
    """Resolvers from a JSON file ``{"models": {name: [endpoint]}, "connectors": {name: spec}, "secrets": {...}}``.

    What ``python -m engine.worker --resolvers FILE`` reads; connector specs are written as in the CRD.
    """
    raw = json.loads(Path(path).read_text())
    return (
        StaticModelResolver(raw.get("models", {})),
        StaticConnectorResolver(raw.get("connectors", {})),
        StaticSecretResolver(raw.get("secrets", {})),
    )


def pick_endpoint(endpoints: Sequence[Endpoint], rng: random.Random | None = None) -> Endpoint | None:
    """Choose a live version at random in proportion to its traffic weight (the canary split)."""
    weighted = [e for e in endpoints if e.weight > 0]
    if not weighted:
        return None
    return (rng or random).choices(weighted, weights=[e.weight for e in weighted])[0]
