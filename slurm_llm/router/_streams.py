"""Relaying a replica's event stream to the client, chunk by chunk, in either API's dialect.

Bytes go out as they arrive (no buffering). A client that leaves ends the relay quietly: the
replica did nothing wrong. A replica that breaks off or falls silent past the idle timeout ends
the stream with an error event in the caller's dialect, never a silent hang, and is reported as
not clean so the dispatcher ejects it.

The replica is given back (``finished``) when its OpenAI ``data: [DONE]`` arrives, before the
client sees it. A client that sends its next request the moment it reads ``[DONE]`` (every
closed-loop client does) would otherwise find the replica still counted busy, and be sent to
the other, already busy, one.
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
    finished: Callable[[], None] = lambda: None,
) -> tuple[web.StreamResponse, bool]:
    """The client's response and whether the stream ended cleanly. ``broken(error name)`` is
    the final event after a break; ``seen`` watches each upstream chunk (for metrics)."""
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            seen(chunk)
            if DONE in chunk:
                finished()
            try:
                await response.write(translate(chunk))
            except ConnectionResetError:
                return response, True  # the client left; the replica did nothing wrong
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        with contextlib.suppress(ConnectionResetError):
            await response.write(broken(type(exc).__name__))
            await response.write_eof()
        return response, False
    # A client that has its [DONE] may hang up before the stream's end; that is no fault of the
    # replica (aiohttp's ClientConnectionResetError is a ConnectionResetError too, and must not
    # reach the dispatcher, which would eject the replica and send the request again).
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response, True
