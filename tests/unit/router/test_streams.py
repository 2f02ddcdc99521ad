"""The end of a stream: the replica is given back when its ``[DONE]`` arrives, and a client
that hangs up after reading it is no fault of the replica; a replica that breaks off is ejected
before the client reads the error event.

A closed-loop client sends its next request the moment it reads ``[DONE]``; if the router still
counted the replica busy then, power-of-two would send that request to another, busy replica.
Such a client also closes its connection then, before the stream's end: the router once took
that for a broken replica, ejected it, and sent the request again to the other one.
The upstream is a stand-in OpenAI server (an aiohttp app named as such): its chat stream holds
the connection open for a second after ``[DONE]``, as a slow engine or network would; its
completions stream breaks off after one event, as a crashing engine's would.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator

import pytest
from aiohttp import web

from slurm_llm._app_thread import AppThread
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread


class StandInUpstream(AppThread):
    """A stand-in OpenAI server (not an engine): chat streams linger, completions break off."""

    def __init__(self) -> None:
        self.requests = 0
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.stream)
        app.router.add_post("/v1/completions", self.break_off)
        super().__init__(app)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n')
        await response.write(b"data: [DONE]\n\n")
        await asyncio.sleep(1.0)  # the connection lingers after the last event
        return response

    async def break_off(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"text": "hi"}]}\n\n')
        assert request.transport is not None
        request.transport.close()  # mid-stream, without the chunked encoding's end
        return response


@pytest.fixture
def upstream() -> Iterator[StandInUpstream]:
    with StandInUpstream() as server:
        yield server


@pytest.fixture
def router(upstream: StandInUpstream) -> Iterator[RouterThread]:
    config = RouterConfig(probes=ProbeConfig(interval_s=0))
    with RouterThread(static=[("m", upstream.url)], config=config) as running:
        yield running


def read_until_done(router: RouterThread) -> None:
    """Reads one stream until its [DONE], checks the replica is free, and hangs up."""
    request = urllib.request.Request(
        f"{router.url}/v1/chat/completions",
        data=b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true}',
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        for line in response:
            if line.startswith(b"data: [DONE]"):
                assert router.load("m").in_flight == 0
                break
        else:
            pytest.fail("no [DONE] in the stream")


def test_the_replica_is_free_as_soon_as_the_client_reads_done(router: RouterThread) -> None:
    read_until_done(router)


@pytest.mark.single_process
def test_a_client_hanging_up_after_done_neither_ejects_the_replica_nor_repeats_the_request(
    router: RouterThread, upstream: StandInUpstream
) -> None:
    read_until_done(router)
    time.sleep(1.5)  # the upstream ends its stream; the router finds the client gone
    [backend] = router.pool.of("m")
    assert backend.failures == 0 and backend.routable(time.monotonic())
    assert upstream.requests == 1


@pytest.mark.single_process
def test_a_replica_that_breaks_off_is_ejected_before_the_client_reads_the_error(
    router: RouterThread, upstream: StandInUpstream
) -> None:
    """With failover off for this request (continuations: tests/unit/router/test_failover.py)."""
    request = urllib.request.Request(
        f"{router.url}/v1/completions",
        data=b'{"model": "m", "prompt": "x", "stream": true}',
        headers={"Content-Type": "application/json", "X-Stream-Failover": "off"},
    )
    [backend] = router.pool.of("m")
    with urllib.request.urlopen(request, timeout=10) as response:
        for line in response:
            if b"broke off the stream" in line:
                assert not backend.routable(time.monotonic()) and backend.in_flight == 0
                break
        else:
            pytest.fail("no error event at the end of the broken stream")
    assert upstream.requests == 1, "with failover off, a begun stream is not sent again"
