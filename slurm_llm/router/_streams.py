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

An engine may also end a stream with an error event of its own and then its ``[DONE]`` (vLLM
does when its engine core dies mid-answer). That too is a break, after whatever came before it:
the event is held back so the stream can go on elsewhere, and is what the client gets if it
cannot. It proves nothing against the replica (the request may be what failed), so the replica
is given back neither failed nor succeeded; the continuation goes to another one.

A stream that must wait for its model to wake (``_elastic``) is opened at once and told what it
waits for in SSE comment lines (``: starting engine``), which every SSE client skips; the first
relay then sends ``: ready`` before the answer's events.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from aiohttp import web

from slurm_llm._sse import json_event
from slurm_llm.router._backends import Backend
from slurm_llm.router._upstream import Answer, UpstreamError

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
        self.replicas: list[Backend] = []  # relayed from, in order
        self.errors: list[bytes] = []  # engines' own error events, held back, translated
        self.waited = False  # progress comments were sent before the first relay

    async def comment(self, text: str) -> bool:
        """An SSE comment line before the answer (progress while it waits); False once the
        client has left or the answer has begun."""
        if self.replicas:
            return False
        if not self.response.prepared:
            await self.response.prepare(self.request)
        self.waited = True
        line = " ".join(text.splitlines())  # one comment line, whatever the text holds
        try:
            await self.response.write(f": {line}\n\n".encode())
        except ConnectionResetError:
            return False
        return True

    async def relay(
        self,
        upstream: Answer,
        backend: Backend,
        translate: Callable[[bytes], bytes] = unchanged,
        seen: Callable[[bytes], None] = lambda chunk: None,
        ended: Callable[[bool | None, str], None] = lambda clean, why: None,
    ) -> web.StreamResponse:
        """Relays one replica's stream. ``translate`` rewrites whole events for the client;
        ``seen`` watches each upstream chunk (for metrics); ``ended(clean)`` is told once the
        stream is over (it may be told again, later, which it must ignore)."""
        if not self.response.prepared:
            await self.response.prepare(self.request)
        first = not self.replicas
        self.replicas.append(backend)  # before any write: progress comments stop here
        if first and self.waited and not await self._write(b": ready\n\n", ended):
            return self.response
        engine = backend.engine
        self.broken = None
        pending = b""
        try:
            async for chunk in upstream.chunks():
                seen(chunk)
                pending += chunk
                cut = pending.rfind(EVENT_END) + len(EVENT_END)
                if cut < len(EVENT_END):
                    continue
                whole, pending = pending[:cut], pending[cut:]
                if engine != "tgi" and not self.done:
                    whole, error = split_at_error(whole)
                    if error is not None:
                        if whole and await self._write(translate(whole), ended):
                            self.forwarded.append(whole)
                        self.errors.append(translate(error))
                        self.broken = "EngineError"
                        ended(None, "")
                        return self.response
                if DONE in whole:
                    self.done = True
                    ended(True, "")
                if not await self._write(translate(whole), ended):
                    return self.response
                self.forwarded.append(whole)
        except (TimeoutError, UpstreamError) as exc:
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

    async def end_with(self, event: bytes) -> web.StreamResponse:
        """Ends a stream that is open but got no answer (it waited, then failed) with ``event``."""
        with contextlib.suppress(ConnectionResetError):
            await self.response.write(event)
            await self.response.write_eof()
        return self.response

    async def finish(self) -> web.StreamResponse:
        """Ends the client's stream: with the error event if the last relay broke off."""
        # A client that has its [DONE] may hang up before the stream's end; that is no fault of
        # the replica (aiohttp's ClientConnectionResetError is a ConnectionResetError too).
        with contextlib.suppress(ConnectionResetError):
            if self.broken == "EngineError":  # the engine's own words, then the stream's end
                await self.response.write(self.errors[-1] + self.closing)
            elif self.broken is not None:
                await self.response.write(self.broken_event(self.broken))
            elif not self.done and self.closing:
                await self.response.write(self.closing)
            await self.response.write_eof()
        return self.response


def split_at_error(whole: bytes) -> tuple[bytes, bytes | None]:
    """``whole`` (complete events) split before its first error event: what comes before, and
    that event (None if there is none); what follows an error is dropped."""
    if b"error" not in whole:  # every event of a healthy stream: no split, no parse
        return whole, None
    events = whole.split(EVENT_END)
    for index, event in enumerate(events):
        if is_error(event):
            return b"".join(e + EVENT_END for e in events[:index]), event + EVENT_END
    return whole, None


def is_error(event: bytes) -> bool:
    """An OpenAI-style error event: ``{"error": ...}``, or vLLM's older ``"object": "error"``."""
    if b"error" not in event:
        return False
    payload = json_event(event)
    return (
        payload is not None
        and ("error" in payload or payload.get("object") == "error")
        and not payload.get("choices")
    )
