"""The router's HTTP/1.1 client to replicas: kept-alive connections, nothing else.

Every request the router forwards is one POST of JSON bytes to a replica it knows, whose answer
is read whole or relayed as it comes. aiohttp's client does that and much more (cookies,
redirects, proxies, tracing, URL and header normalisation), and its per-request Python cost was
the largest item of the router's profile: over 40 % of its time per request, more than its
server side (``benchmarks/results/router_profile-*.md``). This client does only the exchange,
on asyncio's transports, with httptools (llhttp, the parser uvicorn uses) reading the answers.

What it keeps of a serious client:
- **Keep-alive.** Connections are reused, most recent first, up to ``KEEP_IDLE_S`` idle: below
  the keep-alive of the servers behind it (llama.cpp's and uvicorn's 5 s), so it rarely sends
  on a connection the server is closing. When that happens anyway (the connection ends with no
  byte of an answer), the request is sent once more on a new connection: the server closed it
  without reading, so the replica is not at fault and the request is not run twice.
- **Timeouts.** Connecting (``connect_timeout_s``), the whole exchange (``deadline``, for an
  answer read whole), and silence (``idle_s``, between two pieces of a stream, and before its
  head): each ends the exchange with ``TimeoutError`` and closes its connection. A deadline
  more than ``NEAR_S`` away (a request's default is 600 s) is not given a timer of its own
  but checked with the others every ``SWEEP_S`` (``FarDeadlines``), so it ends at most that
  late: a timer armed and cancelled for every request cost 4 µs of it, more than the dict.
- **Flow control.** A stream's reader that falls behind (a slow client) pauses reading from the
  replica once ``HIGH_WATER`` bytes wait, so memory stays bounded per stream.
- **Cut-off.** ``Answer.close()`` ends an exchange at once; its reader sees ``BrokenOff``.
- **TLS** for ``https://`` replicas, with the system's certificates.

Failures are ``Unreachable`` (no connection: refused, reset, unknown host, connect timeout),
``BrokenOff`` (the connection ended or sent something that is not HTTP before the answer was
whole) and ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import httptools
from yarl import URL

KEEP_IDLE_S = 4.0
NEAR_S = 5.0  # a deadline nearer than this gets a timer of its own
SWEEP_S = 0.25  # how often the far deadlines are checked
HIGH_WATER = 256 * 1024  # bytes of a stream read from the replica but not yet by the relay
LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """An exchange with a replica that failed."""


class Unreachable(UpstreamError):
    """No connection to the replica could be made."""


class BrokenOff(UpstreamError):
    """The replica's connection ended (or stopped speaking HTTP) before its answer was whole."""


@dataclass(frozen=True, eq=False)
class Origin:
    """Where a replica listens, parsed once per URL: the request line's prefix and Host. One
    per URL (``Upstreams`` keeps them), so it is hashed as itself, not field by field."""

    host: str
    port: int
    tls: bool
    prefix: bytes  # a path the URL has before the API's (``http://host/proxy``), or b""
    host_header: bytes

    @classmethod
    def of(cls, url: str) -> Origin:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"a replica's URL must be http:// or https://, not {url!r}")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        return cls(
            parsed.host,
            port,
            parsed.scheme == "https",
            parsed.raw_path.rstrip("/").encode(),
            f"{parsed.host}:{port}".encode(),
        )


class FarDeadlines:
    """The exchanges whose deadline is more than ``NEAR_S`` away, each failed by one timer that
    looks at them every ``SWEEP_S`` while there are any."""

    def __init__(self) -> None:
        self.due: dict[Connection, float] = {}
        self.timer: asyncio.TimerHandle | None = None

    def add(self, connection: Connection, deadline: float) -> None:
        self.due[connection] = deadline
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def discard(self, connection: Connection) -> None:
        self.due.pop(connection, None)

    def _sweep(self) -> None:
        now = time.monotonic()
        try:
            for connection, deadline in [*self.due.items()]:
                if deadline <= now:
                    del self.due[connection]
                    connection.past_deadline()
        finally:  # whatever a connection's closing raised, the sweep goes on
            self.timer = None
            if self.due:
                self.timer = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Connection(asyncio.Protocol):
    """One connection to a replica, and the answer being read on it (one at a time)."""

    def __init__(self, origin: Origin, far: FarDeadlines) -> None:
        self.origin = origin
        self.far = far
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.idle_s: float | None = None  # of the exchange under way: silence allowed
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.silence_timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.content_type = b""
        self.keep_alive = False
        self.head_seen = False
        self.any_byte = False
        self.complete = False
        self.until_close = True  # no Content-Length and not chunked: the body ends at close
        self.error: BaseException | None = None
        self.parts: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.last_data = 0.0
        self.waiter: asyncio.Future[None] | None = None

    # -- asyncio's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.any_byte = True
        self.last_data = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(BrokenOff(f"the replica's answer is not HTTP ({exc})"))
            return
        if self.buffered >= HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_seen and self.until_close and not self.complete and self.error is None:
            self.complete = True  # a body that ends with the connection: whole now
        elif not self.complete and self.error is None:
            self.error = BrokenOff(f"the connection ended ({exc or 'closed by the replica'})")
        self._wake()

    # -- httptools' side
    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-type":
            self.content_type = value
        elif lowered in (b"content-length", b"transfer-encoding"):
            self.until_close = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.head_seen = True

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        self.complete = True

    # -- the exchange's side
    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def fail(self, error: BaseException) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self.close()
        self._wake()

    def close(self) -> None:
        self.closed = True
        self.disarm()
        if self.transport is not None:
            self.transport.close()

    def arm(self, deadline: float | None, idle_s: float | None) -> None:
        """The exchange's timers: one at its deadline, one that checks for silence; either
        fails the exchange with ``TimeoutError``. Timers, not a timeout around each wait: a
        stream waits once per event, and a timer set once costs nothing per event."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        self.last_data = now
        self.idle_s = idle_s
        if deadline is not None and deadline - now > NEAR_S:
            self.far.add(self, deadline)
        elif deadline is not None:
            self.deadline_timer = loop.call_later(max(deadline - now, 0.0), self.past_deadline)
        if idle_s is not None:
            self.silence_timer = loop.call_later(idle_s, self._check_silence)

    def disarm(self) -> None:
        self.far.discard(self)
        for timer in (self.deadline_timer, self.silence_timer):
            if timer is not None:
                timer.cancel()
        self.deadline_timer = self.silence_timer = None

    def past_deadline(self) -> None:
        self.fail(TimeoutError("the replica did not answer in time"))

    def _check_silence(self) -> None:
        """A replica is silent when nothing came from it for ``idle_s``; not while reading
        is paused because the relay has not taken what came (a slow client)."""
        assert self.idle_s is not None
        now = time.monotonic()
        if self.paused or self.parts:
            self.last_data = now
        silent = now - self.last_data
        if silent >= self.idle_s * 0.999 and not self.complete:
            self.fail(TimeoutError(f"the replica fell silent for {self.idle_s:g} s"))
            return
        if not self.complete:
            loop = asyncio.get_running_loop()
            self.silence_timer = loop.call_later(self.idle_s - silent, self._check_silence)

    def send(self, path: bytes, body: bytes) -> None:
        self._reset()
        assert self.transport is not None
        origin = self.origin
        self.transport.write(
            b"POST %s%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (origin.prefix, path, origin.host_header, len(body), body)
        )

    async def wait(self) -> None:
        """Until something happens on the connection: bytes, its end, an error."""
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def take(self) -> bytes:
        """The body bytes read so far, handed over; reading resumes if it was paused."""
        parts, self.parts, self.buffered = self.parts, [], 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return parts[0] if len(parts) == 1 else b"".join(parts)


class Answer:
    """A replica's answer, once its head is read: ``status`` and ``content_type``; its body
    read whole (``read``) or as it comes (``chunks``). ``release()`` ends the exchange (and
    keeps the connection if the answer was whole); ``close()`` cuts it off."""

    def __init__(self, pool: Upstreams, connection: Connection) -> None:
        self._pool = pool
        self._connection = connection
        self.status = connection.status
        kind = connection.content_type.split(b";", 1)[0].strip().decode("latin-1").lower()
        self.content_type = kind or "application/octet-stream"

    async def read(self) -> bytes:
        connection = self._connection
        while not connection.complete:
            await self._next()
        return connection.take()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive, in pieces of any size; ``TimeoutError`` after
        ``idle_s`` of silence."""
        connection = self._connection
        while True:
            if connection.parts:
                yield connection.take()
            elif connection.complete:
                return
            else:
                await self._next()

    async def _next(self) -> None:
        connection = self._connection
        if connection.error is not None:
            raise connection.error
        await connection.wait()
        if connection.error is not None and not connection.parts:
            raise connection.error

    def close(self) -> None:
        self._connection.fail(BrokenOff("cut off by the router"))

    def release(self) -> None:
        self._pool.give_back(self._connection)


class Upstreams:
    """Connections to replicas, kept per origin for reuse."""

    def __init__(self, connect_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._origins: dict[str, Origin] = {}
        self._idle: dict[Origin, list[Connection]] = {}
        self._tls: ssl.SSLContext | None = None
        self._far = FarDeadlines()

    async def post(
        self, url: str, path: str, body: bytes, deadline: float | None, idle_s: float | None
    ) -> Answer:
        """Sends ``body`` to ``url + path`` and waits for the answer's head: until
        ``deadline`` (monotonic) if given, and for no more than ``idle_s`` of silence."""
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins[url] = Origin.of(url)
        target = path.encode()
        connection = self._reused(origin)
        if connection is not None:
            try:
                return await self._exchange(connection, target, body, deadline, idle_s)
            except BrokenOff:
                if connection.any_byte:
                    raise
                # The replica closed the kept connection as it was reused: no byte came back, so
                # nothing ran; once more on a new one.
        connection = await self._connect(origin, deadline)
        return await self._exchange(connection, target, body, deadline, idle_s)

    async def _exchange(
        self,
        connection: Connection,
        target: bytes,
        body: bytes,
        deadline: float | None,
        idle_s: float | None,
    ) -> Answer:
        """The answer's head; the connection is closed if it does not come (an error, a
        timeout, the caller cancelled)."""
        connection.send(target, body)
        connection.arm(deadline, idle_s)
        try:
            while not connection.head_seen:
                if connection.error is not None:
                    raise connection.error
                await connection.wait()
        except BaseException:
            connection.close()
            raise
        return Answer(self, connection)

    async def fetch(self, url: str, path: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """One exchange read whole within ``timeout_s``: its status and body."""
        answer = await self.post(url, path, body, time.monotonic() + timeout_s, idle_s=None)
        try:
            return answer.status, await answer.read()
        finally:
            answer.release()

    def _reused(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < KEEP_IDLE_S:
                return connection
            connection.close()
        return None

    async def _connect(self, origin: Origin, deadline: float | None) -> Connection:
        loop = asyncio.get_running_loop()
        limit = self.connect_timeout_s
        if deadline is not None:
            limit = min(limit, max(deadline - time.monotonic(), 0.0))
        try:
            async with asyncio.timeout(limit):
                _, connection = await loop.create_connection(
                    lambda: Connection(origin, self._far),
                    origin.host,
                    origin.port,
                    ssl=self._tls_context() if origin.tls else None,
                )
        except TimeoutError:
            raise Unreachable(f"no connection within {limit:g} s") from None
        except OSError as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from None
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def give_back(self, connection: Connection) -> None:
        """The exchange is over: a connection whose answer was read whole is kept for the next
        request to its replica; any other is closed."""
        if connection.complete and connection.keep_alive and not connection.closed:
            connection.disarm()
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.origin, []).append(connection)
        else:
            connection.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        self._far.stop()
