"""Relaying a replica's event stream to the client, event by event, in either API's dialect.

Bytes go out as whole events arrive (no buffering beyond the event being received), so a
stream that breaks leaves the client at an event boundary, where another replica's events can
follow (``_failover``). A client that leaves ends the relay quietly: the replica did nothing
wrong. A replica that breaks off or falls silent past the idle timeout is reported as not clean
so the dispatcher ejects it; the stream then continues elsewhere, or ends with an error event in
the caller's dialect, never a silent hang.

The replica is given back (``ended``) as soon as its stream is over: when its OpenAI
``data: [DONE]`` arrives, or at a break, in both cases before the client sees it. A client that
sends its next request the moment it reads ``[DONE]`` (every closed-loop client does) would
otherwise find the replica still counted busy, and be sent to the other, already busy, one; a
client told of a break would find the broken replica still routable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import aiohttp
from aiohttp import web

DONE = b"data: [DONE]"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
EVENT_END = b"\n\n"


def unchanged(chunk: bytes) -> bytes:
    return chunk


class ClientStream:
    """One client's event stream, relayed from one replica and, after a break, from the next.

    ``forwarded`` keeps the upstream events the client was sent (before any translation), which
    is what a continuation needs to know: the text so far, the stream's id. ``broken`` names
    the error that ended the last relay, None once a relay ended cleanly.
    """

    def __init__(
        self, request: web.Request, broken_event: Callable[[str], bytes], closing: bytes = b""
    ) -> None:
        """``broken_event(error)`` ends a stream that broke off; ``closing`` ends one whose
        answer is whole but whose replica broke off before saying so (OpenAI's [DONE])."""
        self.request = request
        self.broken_event = broken_event
        self.closing = closing
        self.response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        self.forwarded: list[bytes] = []
        self.broken: str | None = None
        self.done = False  # the OpenAI [DONE] was forwarded: nothing is left to continue
        self.engines: list[str] = []  # of the replicas relayed from, in order

    async def relay(
        self,
        upstream: aiohttp.ClientResponse,
        engine: str,
        translate: Callable[[bytes], bytes] = unchanged,
        seen: Callable[[bytes], None] = lambda chunk: None,
        ended: Callable[[bool | None, str], None] = lambda clean, why: None,
    ) -> web.StreamResponse:
        """Relays one replica's stream. ``translate`` rewrites whole events for the client;
        ``seen`` watches each upstream chunk (for metrics); ``ended(clean)`` is told once the
        stream is over (it may be told again, later, which it must ignore)."""
        if not self.response.prepared:
            await self.response.prepare(self.request)
        self.engines.append(engine)
        self.broken = None
        pending = b""
        try:
            async for chunk in upstream.content.iter_any():
                seen(chunk)
                pending += chunk
                cut = pending.rfind(EVENT_END) + len(EVENT_END)
                if cut < len(EVENT_END):
                    continue
                whole, pending = pending[:cut], pending[cut:]
                if DONE in whole:
                    self.done = True
                    ended(True, "")
                if not await self._write(translate(whole), ended):
                    return self.response
                self.forwarded.append(whole)
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            if not self.done:
                self.broken = type(exc).__name__
            ended(False, f"its stream broke off ({type(exc).__name__})")
            return self.response
        if pending and await self._write(translate(pending + EVENT_END), ended):
            self.forwarded.append(pending)
        if engine != "tgi" and not self.done:  # an OpenAI stream ends with [DONE]: cut short
            self.broken = "EndedWithoutDone"
            ended(False, "its stream ended before [DONE]")
            return self.response
        ended(True, "")
        return self.response

    async def _write(self, data: bytes, ended: Callable[[bool | None, str], None]) -> bool:
        """False when the client has left; the replica did nothing wrong."""
        try:
            await self.response.write(data)
        except ConnectionResetError:
            ended(True, "")
            return False
        return True

    async def finish(self) -> web.StreamResponse:
        """Ends the client's stream: with the error event if the last relay broke off."""
        # A client that has its [DONE] may hang up before the stream's end; that is no fault of
        # the replica (aiohttp's ClientConnectionResetError is a ConnectionResetError too).
        with contextlib.suppress(ConnectionResetError):
            if self.broken is not None:
                await self.response.write(self.broken_event(self.broken))
            elif not self.done and self.closing:
                await self.response.write(self.closing)
            await self.response.write_eof()
        return self.response
