"""The predict path's HTTP/1.1 client (``api.upstream.ModelClient``) against raw asyncio servers that answer
byte for byte what each test scripts: keep-alive reuse, stale connections, framing, timeouts, broken answers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

from api.upstream import ModelClient, UpstreamTimeoutError, UpstreamUnreachableError
from tests.fixtures.downstream import Downstream

T = TypeVar("T")
OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'

# One connection's conversation: it reads requests with ``read_request`` and writes what it likes.
Conversation = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    """A loopback server; each new connection gets its number (0, 1, ...) and runs ``conversation``."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        try:
            await self.conversation(reader, writer, number)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def client(**overrides: Any) -> ModelClient:
    settings: dict[str, Any] = {"timeout": 5.0, "connect_timeout": 2.0, "max_connections": 8, **overrides}
    return ModelClient(**settings)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Runs a test's coroutine on the stock event loop and on uvloop (uvicorn's)."""

    def runner(coro: Coroutine[Any, Any, T]) -> T:
        factory = uvloop.new_event_loop if request.param == "uvloop" else None
        with asyncio.Runner(loop_factory=factory) as loop:
            return loop.run(asyncio.wait_for(coro, 20))

    return runner


def test_keep_alive_connection_is_reused(run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    async def main() -> None:
        async def answer_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            while True:
                await server.read_request(reader)
                writer.write(OK)

        async with Server(answer_all) as server:
            http = client()
            for n in range(3):
                answer = await http.post(server.url + "/base/", "predict", b'{"n":%d}' % n, {"x-request-id": "r"})
                assert (answer.status, answer.content) == (200, b'{"ok":true}')
                assert answer.header(b"content-type") == b"application/json"
            await http.aclose()
        assert server.connections == 1
        first = server.requests[0]
        assert first.startswith(b"POST /base/predict HTTP/1.1\r\n")
        assert f"host: {server.url.removeprefix('http://')}\r\n".encode() in first
        assert b"content-length: 7\r\n" in first
        assert b"x-request-id: r\r\n" in first
        assert first.endswith(b'\r\n\r\n{"n":0}')

    run(main())


def test_a_connection_closed_while_idle_is_replaced(run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    async def main() -> None:
        async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            await server.read_request(reader)
            writer.write(OK)  # keep-alive by the headers, but closed right after (a server's idle timeout)

        async with Server(one_then_close) as server:
            http = client()
            assert (await http.post(server.url, "a", b"", {})).status == 200
            await asyncio.sleep(0.05)
            assert (await http.post(server.url, "a", b"", {})).status == 200
            await http.aclose()
        assert server.connections == 2

    run(main())


def test_a_reused_connection_dropped_before_answering_is_retried_once(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    async def main() -> None:
        async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
            await server.read_request(reader)
            writer.write(OK)
            if number == 0:
                await server.read_request(reader)  # the second request: closed unanswered (the race)
                return
            while True:
                await server.read_request(reader)
                writer.write(OK)

        async with Server(flaky) as server:
            http = client()
            assert (await http.post(server.url, "a", b"1", {})).status == 200
            assert (await http.post(server.url, "a", b"2", {})).status == 200
            await http.aclose()
        assert server.connections == 2
        assert [r[-1:] for r in server.requests] == [b"1", b"2", b"2"]

    run(main())


def test_a_new_connection_dropped_before_answering_is_not_retried(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    async def main() -> None:
        async def rude(reader: asyncio.StreamReader, _: asyncio.StreamWriter, __: int) -> None:
            await server.read_request(reader)

        async with Server(rude) as server:
            http = client()
            with pytest.raises(UpstreamUnreachableError, match="before any answer"):
                await http.post(server.url, "a", b"", {})
            await http.aclose()
        assert server.connections == 1

    run(main())


@pytest.mark.parametrize(
    ("reply", "content", "reused"),
    [
        (b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{"a"\r\n3\r\n:1}\r\n0\r\n\r\n', b'{"a":1}', True),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}", b"{}", False),
        (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end", b"until the end", False),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", b"", True),
    ],
    ids=["chunked", "connection-close", "close-delimited", "interim-answer"],
)
def test_answers_are_framed_as_http_1_1_says(
    run: Callable[[Coroutine[Any, Any, None]], None], reply: bytes, content: bytes, reused: bool
) -> None:
    async def main() -> None:
        async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            while True:
                await server.read_request(reader)
                writer.write(reply)
                if b"content-length" not in reply and b"chunked" not in reply and b"204" not in reply:
                    return  # the body ends where the connection does

        async with Server(scripted) as server:
            http = client()
            answers = [await http.post(server.url, "a", b"", {}) for _ in range(2)]
            await http.aclose()
        assert [a.content for a in answers] == [content, content]
        assert server.connections == (1 if reused else 2)

    run(main())


def test_slow_answers_time_out_and_their_connection_is_dropped(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    async def main() -> None:
        async def slow_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
            while True:
                await server.read_request(reader)
                if number == 0:
                    await asyncio.sleep(1)  # a late answer must not be taken for the next request's
                writer.write(OK)

        async with Server(slow_first) as server:
            http = client(timeout=0.2)
            with pytest.raises(UpstreamTimeoutError):
                await http.post(server.url, "a", b"", {})
            assert (await http.post(server.url, "a", b"", {})).status == 200
            await http.aclose()
        assert server.connections == 2

    run(main())


def test_the_pool_limit_queues_callers(run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    async def main() -> None:
        async def answer_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            while True:
                await server.read_request(reader)
                await asyncio.sleep(0.02)
                writer.write(OK)

        async with Server(answer_all) as server:
            http = client(max_connections=1)
            answers = await asyncio.gather(*(http.post(server.url, "a", b"", {}) for _ in range(4)))
            assert [a.status for a in answers] == [200] * 4
            await http.aclose()
        assert server.connections == 1  # the callers took turns on one connection

    run(main())


@pytest.mark.parametrize(
    "reply",
    [b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"],
    ids=["not-http", "cut-short"],
)
def test_broken_answers_are_unreachable(run: Callable[[Coroutine[Any, Any, None]], None], reply: bytes) -> None:
    async def main() -> None:
        async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            await server.read_request(reader)
            writer.write(reply)
            await writer.drain()

        async with Server(broken) as server:
            http = client()
            with pytest.raises(UpstreamUnreachableError):
                await http.post(server.url, "a", b"", {})
            await http.aclose()

    run(main())


def test_refused_and_invalid_endpoints_are_unreachable(run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]

    async def main() -> None:
        http = client()
        with pytest.raises(UpstreamUnreachableError, match="ConnectionRefusedError"):
            await http.post(f"http://127.0.0.1:{closed}", "a", b"", {})
        for url in ("ftp://models.example/x", "http://", "http://host:99999"):
            with pytest.raises(UpstreamUnreachableError):
                await http.post(url, "a", b"", {})

    run(main())


def test_header_values_that_would_split_the_request_are_dropped(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    async def main() -> None:
        async def answer_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            while True:
                await server.read_request(reader)
                writer.write(OK)

        async with Server(answer_all) as server:
            http = client()
            headers = {"x-request-id": "a\r\nx-injected: 1", "accept": "application/json"}
            assert (await http.post(server.url, "a", b"", headers)).status == 200
            await http.aclose()
        (request,) = server.requests
        assert b"x-injected" not in request
        assert b"accept: application/json\r\n" in request

    run(main())


def test_a_client_moves_to_a_new_event_loop() -> None:
    # A test client may run each request on a loop of its own: the pool must not touch the closed loop's
    # connections, and starts afresh on the new one.
    server = Downstream()
    http = client()
    try:
        for _ in range(3):
            with asyncio.Runner() as runner:  # a new loop each time, closed at the end
                assert runner.run(http.post(server.base_url, "a", b"{}", {})).status == 200
    finally:
        server.close()
    assert server.count("/a") == 3


def test_connections_idle_past_the_expiry_are_not_reused(run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    async def main() -> None:
        async def answer_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
            while True:
                await server.read_request(reader)
                writer.write(OK)

        async with Server(answer_all) as server:
            http = client(keepalive_expiry=0.05)
            assert (await http.post(server.url, "a", b"", {})).status == 200
            assert (await http.post(server.url, "a", b"", {})).status == 200  # within the expiry: reused
            await asyncio.sleep(0.1)
            assert (await http.post(server.url, "a", b"", {})).status == 200
            await http.aclose()
        assert server.connections == 2

    run(main())
