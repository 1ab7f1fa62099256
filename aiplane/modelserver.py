"""Runs a Model's BentoML service locally with `bentoml serve`, for the embedded mode.

On Kubernetes the Model operator runs the same command in a serving Deployment; here it is a child process. A
Model says where its service's source is, relative to its manifest folder, with the annotation below.

An http Connector may name a BentoML service that stands in for its system on one machine (``aiplane.io/dev-bento``
and ``aiplane.io/dev-working-dir``): the embedded mode serves it the same way and sends the Connector's calls there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from aiplane.processes import stop_process_group
from crds import Connector, Model
from crds.connector import ConnectorSpec

WORKING_DIR_ANNOTATION = "aiplane.io/dev-working-dir"
BENTO_ANNOTATION = "aiplane.io/dev-bento"
log = logging.getLogger(__name__)


class ModelServerError(RuntimeError):
    """The service could not be started; the message says why and where its log is."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def working_dir(resource: Model | Connector, manifests_dir: Path) -> Path:
    kind = type(resource).__name__
    annotations = resource.metadata.get("annotations") or {}
    relative: str | None = annotations.get(WORKING_DIR_ANNOTATION)
    if relative is None:
        raise ModelServerError(
            f"{kind} {resource.metadata.get('name')} has no {WORKING_DIR_ANNOTATION} annotation: the embedded mode "
            "needs to know which folder holds its BentoML service"
        )
    path = (manifests_dir / str(relative)).resolve()
    if not path.is_dir():
        raise ModelServerError(
            f"{kind} {resource.metadata.get('name')}: {WORKING_DIR_ANNOTATION} {path} is not a folder"
        )
    return path


def stand_in(connector: Connector, manifests_dir: Path, log_dir: Path) -> ModelServer | None:
    """The local service standing in for an http Connector's system, when its annotations name one (not started)."""
    annotations = connector.metadata.get("annotations") or {}
    bento = annotations.get(BENTO_ANNOTATION)
    if bento is None:
        return None
    name = connector.metadata["name"]
    if connector.spec.http is None:
        raise ModelServerError(f"Connector {name}: {BENTO_ANNOTATION} stands in for http Connectors only")
    return ModelServer(
        name=f"connector-{name}",
        bento=str(bento),
        working_dir=working_dir(connector, manifests_dir),
        log_path=log_dir / f"connector-{name}.log",
    )


def served_by(spec: ConnectorSpec, url: str) -> ConnectorSpec:
    """``spec`` calling ``url``'s origin (a stand-in on loopback, hence private networks allowed), same path."""
    assert spec.http is not None
    local = urlsplit(url)
    original = urlsplit(spec.http.url)
    http = spec.http.model_copy(
        update={
            "url": urlunsplit(original._replace(scheme=local.scheme, netloc=local.netloc)),
            "allow_private_networks": True,
        }
    )
    return spec.model_copy(update={"http": http})


@dataclass
class ModelServer:
    """One `bentoml serve` child process on a free loopback port."""

    name: str
    bento: str
    working_dir: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    # Set on top of this process's environment (the claims model's fault settings, in tests).
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 180.0) -> ModelServer:
        self.spawn()
        return self.wait_ready(ready_timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it (``wait_ready``), so that several servers start together."""
        bentoml = Path(sys.executable).with_name("bentoml")
        command = [str(bentoml), "serve", "--working-dir", str(self.working_dir), self.bento]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            # A session of its own: stopping it must take BentoML's worker processes along.
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **self.env}
            )

    def wait_ready(self, timeout: float = 180.0) -> ModelServer:
        self._wait_ready(timeout)
        log.info("model server ready", extra={"model": self.name, "url": self.url})
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ModelServerError(
                    f"bentoml serve for {self.name} exited with {self.process.returncode}; see {self.log_path}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.25)
        self.stop()
        raise ModelServerError(f"bentoml serve for {self.name} not ready after {timeout:.0f}s; see {self.log_path}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None:
            stop_process_group(self.process, timeout)
