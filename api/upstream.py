"""The model client of the predict path: a pooled keep-alive HTTP/1.1 client on asyncio and httptools.

Why not httpx (or aiohttp): on the predict path the client is most of the gateway's own cost. Measured per call
against the claims model on the 2-core dev box (CPU time of the calling process, a 10 ms model): httpx's
transport about 2.0 ms, aiohttp about 0.65 ms, this client about 0.05 ms. A pass-through POST to a model server
inside the cluster needs little of what they offer (redirects, cookies, auth flows, proxies, HTTP/2, streaming),
so this client does only that: one request written with one ``write``, the answer parsed by httptools (the
llhttp parser uvicorn serves the gateway with), connections kept per origin and reused LIFO.

Failures are ``UpstreamTimeoutError`` (connect, pool or answer slower than its timeout) and ``UpstreamUnreachableError``
(refused, reset, closed before the whole answer, not HTTP). A connection that had been idle in the pool and turns
out closed before any byte of the answer arrived (the server's keep-alive timeout racing our request) is retried
once on a new connection: the server never read that request.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote, urlsplit

import httptools

# Origins (scheme, host, port) whose parsed form is remembered: endpoints are few, but they come from Model
# status, so the cache is bounded anyway.
_MAX_ORIGINS = 1024


class UpstreamError(Exception):
    """The model could not be called; ``reason`` says how, in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamTimeoutError(UpstreamError):
    pass


class UpstreamUnreachableError(UpstreamError):
    pass


@dataclass(frozen=True)
class Answer:
    status: int
    #: Header names lower-cased, as bytes, in the order received.
    headers: list[tuple[bytes, bytes]]
    content: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class _Origin:
    key: tuple[str, str, int]
    host: str
    port: int
    tls: bool
    #: The Host header and the path prefix of the base URL, ready to be written.
    host_header: bytes
    prefix: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; answers one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._received = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._headers_done = False
        self._delimited = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not derive from asyncio.Transport, but have its methods.)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.close()  # bytes nobody asked for: the connection is out of step, never reuse it
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(UpstreamUnreachableError(f"not an HTTP/1.1 answer ({type(exc).__name__})"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._delimited:
            # Neither Content-Length nor chunked: the answer is whatever came until the server closed.
            self.on_message_complete()
        elif self._received:
            waiter.set_exception(UpstreamUnreachableError("connection closed before the whole answer"))
        else:
            waiter.set_exception(_ClosedBeforeAnswerError("connection closed before any answer"))

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding"):
            self._delimited = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self._reset()
            return
        if waiter is not None and not waiter.done():
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            waiter.set_result(Answer(status, self._headers, body))
        if not self._parser.should_keep_alive():
            self.close()

    # -- the client's side

    async def request(self, data: bytes, timeout: float) -> Answer:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._reset()
        self._received = False
        waiter: asyncio.Future[Answer] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            self.transport.write(data)
            return await waiter
        except BaseException:
            # Timed out, cancelled or broken half-way: what comes next on this connection is unknown.
            self.close()
            raise
        finally:
            timer.cancel()
            self._waiter = None

    def _reset(self) -> None:
        self._headers = []
        self._body = []
        self._headers_done = False
        self._delimited = False

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _ClosedBeforeAnswerError(UpstreamUnreachableError):
    """A reused connection was closed by the server before it answered: safe to send again."""


def _expire(waiter: asyncio.Future[Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeoutError("no answer in time"))


class ModelClient:
    """Keep-alive connections to model endpoints, at most ``max_connections`` in use at once.

    Bound to the event loop it is first used on (like any asyncio connection): used from another loop (a test
    client that runs each request on a new loop), it drops the old loop's connections and starts afresh.
    """

    def __init__(
        self, *, timeout: float, connect_timeout: float, max_connections: int, keepalive_expiry: float = 30.0
    ) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._origins: dict[str, _Origin] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tls: ssl.SSLContext | None = None

    async def post(self, base_url: str, path: str, content: bytes, headers: Mapping[str, str]) -> Answer:
        """``POST {base_url}/{path}`` with ``content`` and ``headers`` (names lower-case; Host and
        Content-Length are set here); the whole answer, whatever its status."""
        origin = self._origin(base_url)
        lines = [b"POST ", origin.prefix, path.encode("ascii"), b" HTTP/1.1\r\nhost: ", origin.host_header]
        lines.append(b"\r\ncontent-length: %d\r\n" % len(content))
        for name, value in headers.items():
            raw = value.encode("latin-1", "replace")
            if b"\r" in raw or b"\n" in raw or b"\0" in raw:
                continue  # would split the request; the ASGI server never hands such a value over anyway
            lines += (name.encode("ascii"), b": ", raw, b"\r\n")
        lines += (b"\r\n", content)
        data = b"".join(lines)

        slots = self._slots_for_loop()
        deadline = time.monotonic() + self.timeout
        if slots.locked():  # every connection in use: wait for one, within the timeout (no timer otherwise)
            try:
                async with asyncio.timeout(self.timeout):
                    await slots.acquire()
            except TimeoutError:
                raise UpstreamTimeoutError("no free connection in time") from None
        else:
            await slots.acquire()
        connection: _Connection | None = None
        try:
            connection, reused = await self._connection(origin)
            try:
                return await connection.request(data, max(deadline - time.monotonic(), 0.001))
            except _ClosedBeforeAnswerError:
                if not reused:
                    raise
            connection = await self._open(origin)
            return await connection.request(data, max(deadline - time.monotonic(), 0.001))
        finally:
            if connection is not None and not connection.closed:
                connection.idle_since = time.monotonic()
                self._idle.setdefault(origin.key, []).append(connection)
            slots.release()

    async def aclose(self) -> None:
        for pool in self._idle.values():
            for connection in pool:
                connection.close()
        self._idle.clear()

    def _slots_for_loop(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or loop is not self._loop:
            old, idle = self._loop, [c for pool in self._idle.values() for c in pool]
            self._idle.clear()
            # The old loop's connections are closed by that loop (a closed loop's transports are gone already).
            if old is not None and not old.is_closed():
                for connection in idle:
                    old.call_soon_threadsafe(connection.close)
            self._loop = loop
            self._slots = asyncio.Semaphore(self.max_connections)
        return self._slots

    async def _connection(self, origin: _Origin) -> tuple[_Connection, bool]:
        pool = self._idle.get(origin.key)
        now = time.monotonic()
        while pool:
            connection = pool.pop()  # the most recently used: the least likely to have been closed
            if not connection.closed and now - connection.idle_since < self.keepalive_expiry:
                return connection, True
            connection.close()
        return await self._open(origin), False

    async def _open(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if origin.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    _Connection, origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None
                )
        except TimeoutError:
            raise UpstreamTimeoutError("no connection in time") from None
        except OSError as exc:  # refused, unreachable, unknown host, TLS failure (ssl.SSLError is an OSError)
            raise UpstreamUnreachableError(type(exc).__name__) from exc
        return connection

    def _origin(self, base_url: str) -> _Origin:
        origin = self._origins.get(base_url)
        if origin is None:
            origin = _parse_origin(base_url)
            if len(self._origins) >= _MAX_ORIGINS:
                self._origins.clear()
            self._origins[base_url] = origin
        return origin


def _parse_origin(base_url: str) -> _Origin:
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError as exc:
        raise UpstreamUnreachableError(f"invalid endpoint URL ({exc})") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamUnreachableError(f"endpoint URL {base_url!r} is not http(s)://host[:port][/path]")
    tls = parts.scheme == "https"
    port = port or (443 if tls else 80)
    default_port = port == (443 if tls else 80)
    host = parts.hostname
    host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
    # Percent-encode what may not stand in a request line (spaces, non-ASCII); keep what is already encoded.
    prefix = quote(parts.path.rstrip("/") + "/", safe="/%:@!$&'()*+,;=-._~")
    try:
        encoded_host = host_header.encode("ascii" if host_header.isascii() else "idna")
    except UnicodeError as exc:
        raise UpstreamUnreachableError(f"endpoint URL {base_url!r} has an invalid host name") from exc
    return _Origin(
        key=(parts.scheme, host, port), host=host, port=port, tls=tls, host_header=encoded_host, prefix=prefix.encode()
    )
