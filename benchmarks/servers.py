"""Shared parts of the HTTP benchmarks: apps served by a real uvicorn in a child process, and a load generator.

Servers run in child processes (``python -m benchmarks.servers KIND CONFIG``) so that the process measuring
them, and its load generator, do not share their interpreter lock. The parent binds the listening socket on a
free 127.0.0.1 port and hands it to the child (no race for the port). Both kinds run under the same uvicorn
settings (its defaults: uvloop and httptools where installed, one worker process, uvicorn's access log off):

- ``gateway``: ``api.app.create_app`` over an ``Engine`` on the given store, with static model endpoints.
- either kind logs as ``aiplane`` does (``aiplane.logs.configure``) when the config names a ``log_level``;
  otherwise only uvicorn's warnings are logged.
- ``bare``: a FastAPI app with one route that reads the request body and answers a fixed JSON document.
- ``append``: the bare app that first appends each request (a fresh id, its Idempotency-Key and body) to a SQLite
  table with the standard library's sqlite3, group-committed on a worker thread as the gateway's submissions are.
  The least a durable submission can do in this process model: what durability alone costs against the bare app.

To see where a server's time goes, attach a sampling profiler to its process while a benchmark runs, e.g.
``py-spy record -p <pid> -f raw --threads`` (``ServedProcess.process.pid``).

The load generator speaks HTTP/1.1 itself over keep-alive asyncio connections (pre-built requests, a few tens of
microseconds per request), so that it is not what limits the throughput of a fast baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from aiplane import logs
from aiplane.processes import stop_process_group
from api import GatewaySettings, create_app
from engine import Engine, StaticModelResolver

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# ---------------------------------------------------------------- scale


def smoke() -> bool:
    """``AIPLANE_BENCH_SCALE=smoke``: tiny sizes, for the test that checks the benchmarks still run."""
    return os.environ.get("AIPLANE_BENCH_SCALE", "").lower() == "smoke"


# ---------------------------------------------------------------- servers in child processes


@dataclass
class ServedProcess:
    """A uvicorn child process serving ``kind`` with ``config`` on a free loopback port."""

    kind: str
    config: Mapping[str, Any]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 60.0) -> ServedProcess:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        command = [sys.executable, "-m", "benchmarks.servers", self.kind, str(sock.fileno()), json.dumps(self.config)]
        try:
            with self.log_path.open("ab") as out:
                # A session of its own, so that stopping it stops everything it started.
                self.process = subprocess.Popen(
                    command,
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    pass_fds=(sock.fileno(),),
                    start_new_session=True,
                )
        finally:
            sock.close()
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} server not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time the server process has used so far, or None where /proc does not say."""
        if self.process is None:
            return None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        # utime and stime: fields 14 and 15 of proc(5), counted from the state field (the 3rd) after the name.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None:
            stop_process_group(self.process, timeout)


@contextlib.contextmanager
def served(kind: str, config: Mapping[str, Any], log_dir: Path) -> Iterator[ServedProcess]:
    server = ServedProcess(kind, config, log_dir / f"{kind}.log").start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


# ---------------------------------------------------------------- the child side


def _gateway_app(config: Mapping[str, Any]) -> tuple[FastAPI, Engine]:
    kwargs: dict[str, Any] = {}
    if "sqlite_synchronous" in config:
        kwargs["sqlite_synchronous"] = config["sqlite_synchronous"]
    if "data_dir" in config:
        kwargs["data_dir"] = config["data_dir"]
    engine = Engine(
        config["db_url"],
        model_resolver=StaticModelResolver(config.get("models") or {}),
        migrate_on_start=False,
        **kwargs,
    )
    return create_app(engine, GatewaySettings(**(config.get("settings") or {}))), engine


def _bare_app(config: Mapping[str, Any], keep: Callable[[Request, bytes], Awaitable[None]] | None = None) -> FastAPI:
    """``keep``: awaited with each request and its body before the answer (the ``append`` kind's write)."""
    # (Request is imported at module level: FastAPI resolves the handler's annotations in its module.)
    body = config["body"]
    status = int(config.get("status", 200))
    headers = dict(config.get("headers") or {})
    app = FastAPI()

    async def handler(request: Request) -> JSONResponse:
        raw = await request.body()
        if keep is not None:
            await keep(request, raw)
        return JSONResponse(body, status_code=status, headers=headers)

    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_api_route(config["path"], handler, methods=["POST"])
    app.add_api_route("/healthz", healthz, methods=["GET"])
    return app


def _append_app(config: Mapping[str, Any]) -> FastAPI:
    db = sqlite3.connect(config["db_path"], check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={config.get('sqlite_synchronous', 'FULL')}")
    db.execute("CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, idempotency_key TEXT UNIQUE, body BLOB)")
    pending: list[tuple[tuple[str, str | None, bytes], asyncio.Future[None]]] = []
    writer: list[asyncio.Task[None]] = []

    def write(rows: list[tuple[str, str | None, bytes]]) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO requests VALUES (?, ?, ?)", rows)
        db.execute("COMMIT")

    async def write_batches() -> None:
        while pending:
            batch = pending[:]
            pending.clear()
            await anyio.to_thread.run_sync(write, [row for row, _ in batch])
            for _, done in batch:
                done.set_result(None)

    async def append(request: Request, raw: bytes) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending.append(((uuid.uuid4().hex, request.headers.get("idempotency-key"), raw), done))
        if not writer or writer[0].done():
            writer[:] = [asyncio.create_task(write_batches())]
        await done

    return _bare_app(config, keep=append)


def _exit(*_: object) -> None:
    raise SystemExit(0)


def _serve(kind: str, fd: int, config: Mapping[str, Any]) -> None:
    engine: Engine | None = None
    app: FastAPI
    if "log_level" in config:
        # Logging as ``aiplane`` sets it up (structured lines on stderr, here the child's log file), so the
        # server does the per-request logging it does when deployed (the gateway's access log at INFO).
        logs.configure(config["log_level"])
    if kind == "gateway":
        app, engine = _gateway_app(config)
    elif kind == "bare":
        app = _bare_app(config)
    elif kind == "append":
        app = _append_app(config)
    else:
        raise SystemExit(f"unknown server kind {kind!r}")
    sock = socket.socket(fileno=fd)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", backlog=1024, timeout_keep_alive=60)
    )
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again once its own handler is gone: make
    # that an exit that runs the clean-up below rather than the default handler's sudden death.
    signal.signal(signal.SIGTERM, _exit)
    try:
        server.run(sockets=[sock])
    finally:
        if engine is not None:
            engine.close()


# ---------------------------------------------------------------- load generator


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    statuses: Mapping[int, int]

    @property
    def per_request_s(self) -> float:
        return self.seconds / self.requests

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


def http_request(
    method: str, url: str, *, headers: Mapping[str, str] | None = None, body: bytes = b"", keep_alive: bool = True
) -> bytes:
    """The bytes of one HTTP/1.1 request."""
    parsed = httpx.URL(url)
    lines = [f"{method} {parsed.raw_path.decode()} HTTP/1.1", f"Host: {parsed.host}:{parsed.port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class _Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    unexpected: list[bytes] = field(default_factory=list)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, _, rest = head.partition(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length: int | None = None
    chunked = close = False
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    if chunked:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(chunk[:-2])
        body = b"".join(parts)
    else:
        body = await reader.readexactly(length or 0)
    return status, body, close


async def _load(host: str, port: int, payloads: Sequence[bytes], concurrency: int) -> tuple[float, _Tally]:
    tally = _Tally()
    pending = iter(payloads)
    connections = [await asyncio.open_connection(host, port) for _ in range(min(concurrency, len(payloads)))]

    async def client(index: int) -> None:
        reader, writer = connections[index]
        for payload in pending:
            writer.write(payload)
            status, body, close = await _read_response(reader)
            tally.statuses[status] += 1
            if status >= 300 and len(tally.unexpected) < 3:
                tally.unexpected.append(body[:500])
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                connections[index] = reader, writer

    start = time.perf_counter()
    try:
        await asyncio.gather(*(client(i) for i in range(len(connections))))
        elapsed = time.perf_counter() - start
    finally:
        for _, writer in connections:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return elapsed, tally


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def run_load(url: str, payloads: Sequence[bytes], *, concurrency: int, expect: int) -> LoadResult:
    """Send ``payloads`` (requests from ``http_request``) over ``concurrency`` keep-alive connections to the
    server at ``url``, as fast as it answers; every answer must have status ``expect``."""
    parsed = httpx.URL(url)
    assert parsed.port is not None
    elapsed, tally = _run_async(_load(parsed.host, parsed.port, payloads, concurrency))
    wrong = {status: n for status, n in tally.statuses.items() if status != expect}
    if wrong:
        raise RuntimeError(f"expected only {expect} answers from {url}, got {dict(tally.statuses)}: {tally.unexpected}")
    return LoadResult(len(payloads), elapsed, dict(tally.statuses))


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]))
