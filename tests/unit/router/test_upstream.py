"""The router's client to replicas, against real sockets: scripted HTTP servers (asyncio
servers that answer with the bytes each test writes, stand-ins for engines) on loopback.

What it must keep of aiohttp's client, which it replaced on the hot path: connections kept and
reused; a kept connection the server closed costs the request nothing; chunked answers and
answers that end with the connection; timeouts on connecting, on the whole exchange and on a
stream's silence; a stream cut off by the router; a slow reader holding bounded memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from slurm_llm.router import _upstream
from slurm_llm.router._upstream import (
    HIGH_WATER,
    BrokenOff,
    Unreachable,
    Upstreams,
)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class ScriptedServer:
    """A stand-in replica: each connection is handed to ``script``; counts connections and
    requests (a request is its head and ``Content-Length`` body)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )  # fmt: skip
    return head + await reader.readexactly(length)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Whether ``condition()`` came to hold within ``timeout``, looked at every 10 ms."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_answers_are_read_whole_and_their_connection_is_reused() -> None:
    seen: list[bytes] = []

    async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(OK)

    async def test() -> None:
        async with ScriptedServer(keep_answering) as server:
            upstreams = Upstreams(connect_timeout_s=5)
            for _ in range(3):
                assert await upstreams.fetch(server.url, "/v1/x", b'{"a": 1}', 5) == (200, b"{}")
            assert server.connections == 1
            upstreams.close()

    run(test)
    assert seen[0].startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert b"Content-Type: application/json\r\n" in seen[0]
    assert seen[0].endswith(b'\r\n\r\n{"a": 1}')


def test_a_kept_connection_the_replica_closed_costs_the_request_nothing() -> None:
    """The replica answers one request per connection, then closes it without saying so (a
    keep-alive timeout racing the next request): the next request goes on a new connection."""

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()

    async def test() -> None:
        async with ScriptedServer(answer_once) as server:
            upstreams = Upstreams(connect_timeout_s=5)
            assert await upstreams.fetch(server.url, "/", b"{}", 5) == (200, b"{}")
            kept = [c for idle in upstreams._idle.values() for c in idle]
            assert await until(lambda: all(c.closed for c in kept))  # the replica's close came
            assert await upstreams.fetch(server.url, "/", b"{}", 5) == (200, b"{}")
            assert server.connections == 2

    run(test)


def test_a_connection_that_ends_after_part_of_an_answer_is_broken_off() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}")
        await writer.drain()

    async def test() -> None:
        async with ScriptedServer(half) as server:
            with pytest.raises(BrokenOff):
                await Upstreams(connect_timeout_s=5).fetch(server.url, "/", b"{}", 5)

    run(test)


def test_chunked_answers_and_answers_that_end_with_the_connection() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        await writer.drain()
        await read_request(reader)  # kept: chunked answers end without closing
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async def test() -> None:
        async with ScriptedServer(chunked) as server:
            upstreams = Upstreams(connect_timeout_s=5)
            assert await upstreams.fetch(server.url, "/", b"{}", 5) == (200, b"abcde")
            assert await upstreams.fetch(server.url, "/", b"{}", 5) == (200, b"until the end")
            assert server.connections == 1

    run(test)


def test_a_stream_arrives_piece_by_piece_and_its_silence_times_out() -> None:
    async def falls_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        for n in range(3):
            writer.write(b"9\r\ndata: %d\n\n\r\n" % n)
            await writer.drain()
            await asyncio.sleep(0.1)
        await asyncio.sleep(5)

    async def test() -> None:
        async with ScriptedServer(falls_silent) as server:
            upstreams = Upstreams(connect_timeout_s=5)
            answer = await upstreams.post(server.url, "/", b"{}", deadline=None, idle_s=0.5)
            assert answer.content_type == "text/event-stream"
            pieces: list[bytes] = []
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                async for piece in answer.chunks():
                    pieces.append(piece)
            answer.release()
            assert b"".join(pieces) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
            assert len(pieces) == 3  # each as it came, not gathered
            assert 0.7 < time.monotonic() - started < 3  # 0.2 s of events, then 0.5 s silence

    run(test)


def test_an_answer_read_whole_is_bounded_by_its_deadline() -> None:
    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def test() -> None:
        async with ScriptedServer(never_answers) as server:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await Upstreams(connect_timeout_s=5).fetch(server.url, "/", b"{}", 0.3)
            assert time.monotonic() - started < 2

    run(test)


def test_a_far_deadline_is_kept_by_the_sweep_and_left_by_what_ends_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_upstream, "NEAR_S", 0.1)  # 0.3 s is far: no timer of its own
    monkeypatch.setattr(_upstream, "SWEEP_S", 0.05)

    async def slow_then_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await read_request(reader)).endswith(b"[]"):  # answered; then {}: silence
            writer.write(OK)
            await writer.drain()
        await asyncio.sleep(5)

    async def test() -> None:
        async with ScriptedServer(slow_then_silent) as server:
            upstreams = Upstreams(connect_timeout_s=5)
            for _ in range(3):  # answered in time: each leaves the sweep's list
                assert await upstreams.fetch(server.url, "/", b"[]", 0.3) == (200, b"{}")
            assert not upstreams._far.due
            started = time.monotonic()
            silent = asyncio.create_task(upstreams.fetch(server.url, "/", b"{}", 0.3))
            assert await until(lambda: bool(upstreams._far.due))  # the sweep's, no timer
            with pytest.raises(TimeoutError):
                await silent
            assert 0.3 <= time.monotonic() - started < 1.5
            assert not upstreams._far.due
            assert await until(lambda: upstreams._far.timer is None)  # the sweep stops
            upstreams.close()

    run(test)


def test_a_refused_connection_is_unreachable() -> None:
    async def test() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(Unreachable):
            await Upstreams(connect_timeout_s=5).fetch(f"http://127.0.0.1:{port}", "/", b"{}", 5)

    run(test)


def test_a_stream_cut_off_by_the_router_ends_its_reader_at_once() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async def test() -> None:
        async with ScriptedServer(endless) as server:
            answer = await Upstreams(5).post(server.url, "/", b"{}", deadline=None, idle_s=30)
            pieces = answer.chunks()
            assert await anext(pieces) == b"hello"
            asyncio.get_running_loop().call_later(0.1, answer.close)
            started = time.monotonic()
            with pytest.raises(BrokenOff):
                await anext(pieces)
            assert time.monotonic() - started < 1

    run(test)


def test_a_slow_reader_holds_bounded_memory() -> None:
    """The replica sends 4 MiB at once; while nobody reads, the client stops reading from the
    socket once ``HIGH_WATER`` bytes wait, and everything still arrives once read."""
    size = 4 * 1024 * 1024

    async def floods(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
        await writer.drain()

    async def test() -> None:
        async with ScriptedServer(floods) as server:
            answer = await Upstreams(5).post(server.url, "/", b"{}", deadline=None, idle_s=5)
            connection = answer._connection
            assert await until(lambda: connection.paused)  # nobody reads
            assert connection.buffered < HIGH_WATER + 512 * 1024  # one socket read past it
            received = 0
            async for piece in answer.chunks():
                received += len(piece)
            assert received == size

    run(test)
