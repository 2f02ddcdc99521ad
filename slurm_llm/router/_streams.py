"""Relaying a replica's event stream to the client, chunk by chunk, in either API's dialect.

Bytes go out as they arrive (no buffering). A client that leaves ends the relay quietly: the
replica did nothing wrong. A replica that breaks off or falls silent past the idle timeout ends
the stream with an error event in the caller's dialect, never a silent hang, and is reported as
not clean so the dispatcher ejects it.

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


def unchanged(chunk: bytes) -> bytes:
    return chunk


async def relay_events(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    broken: Callable[[str], bytes],
    translate: Callable[[bytes], bytes] = unchanged,
    seen: Callable[[bytes], None] = lambda chunk: None,
    ended: Callable[[bool], None] = lambda clean: None,
) -> web.StreamResponse:
    """The client's response. ``broken(error name)`` is the final event after a break;
    ``seen`` watches each upstream chunk (for metrics); ``ended(clean)`` is told once the
    stream is over (it may be told again, later, which it must ignore)."""
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            seen(chunk)
            if DONE in chunk:
                ended(True)
            try:
                await response.write(translate(chunk))
            except ConnectionResetError:
                ended(True)  # the client left; the replica did nothing wrong
                return response
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        ended(False)
        with contextlib.suppress(ConnectionResetError):
            await response.write(broken(type(exc).__name__))
            await response.write_eof()
        return response
    ended(True)
    # A client that has its [DONE] may hang up before the stream's end; that is no fault of the
    # replica (aiohttp's ClientConnectionResetError is a ConnectionResetError too, and must not
    # reach the dispatcher, which would eject the replica and send the request again).
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response
