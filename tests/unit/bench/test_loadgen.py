"""The load generator against a stand-in OpenAI server (an aiohttp app named as a stand-in:
it scripts the failures a real engine gives only by chance). Every request becomes a record."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from slurm_llm.bench._loadgen import Target, closed_loop, open_loop, poisson_arrivals, send

Scenario = Callable[[web.Request], Awaitable[web.StreamResponse]]


def chunk(text: str) -> bytes:
    return f"data: {json.dumps({'choices': [{'delta': {'content': text}}]})}\n\n".encode()


async def streams_three_tokens(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for word in ("a", "b", "c"):
        await response.write(chunk(word))
        await asyncio.sleep(0.01)
    usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}
    await response.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
    return response


async def refuses(request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": "queue full"}, status=429)


async def fails_mid_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(chunk("a"))
    await response.write(b'data: {"error": {"message": "replica died"}}\n\n')
    return response


async def ends_early(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(chunk("a"))
    return response


async def is_silent(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(1)
    return web.Response()


async def with_stand_in(scenario: Scenario, work: Callable[[str], Awaitable[Any]]) -> Any:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", scenario)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        return await work(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def one_request(scenario: Scenario, timeout: float = 10.0) -> Any:
    async def work(url: str) -> Any:
        async with aiohttp.ClientSession() as session:
            return await send(session, f"{url}/v1/chat/completions", {}, timeout, 0.0)

    return asyncio.run(with_stand_in(scenario, work))


def test_a_stream_gives_ttft_gaps_and_the_servers_token_count() -> None:
    record = one_request(streams_three_tokens)
    assert record.ok and record.error is None
    assert 0 < record.ttft_s < record.e2e_s
    assert len(record.itl_s) == 2  # three text events, two gaps
    assert (record.output_tokens, record.prompt_tokens) == (4, 9)  # usage wins over counting


def test_a_refusal_is_recorded_as_rejected_not_lost() -> None:
    record = one_request(refuses)
    assert record.rejected and not record.ok
    assert record.error.startswith("HTTP 429") and "queue full" in record.error


@pytest.mark.parametrize(
    ("scenario", "said"),
    [
        (fails_mid_stream, "replica died"),
        (ends_early, "ended without [DONE]"),
        (is_silent, "no answer within 0.3 s"),
    ],
)
def test_broken_streams_become_errors_with_what_happened(scenario: Scenario, said: str) -> None:
    record = one_request(scenario, timeout=0.3)
    assert not record.ok and not record.rejected
    assert said in record.error


def test_a_server_that_is_not_there_is_an_error_record() -> None:
    async def work() -> Any:
        async with aiohttp.ClientSession() as session:
            return await send(session, "http://127.0.0.1:9/v1/chat/completions", {}, 5, 0.0)

    record = asyncio.run(work())
    assert "ClientConnectorError" in record.error


def test_closed_loop_users_never_exceed_the_concurrency() -> None:
    in_flight, most = 0, 0

    async def counted(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            return await streams_three_tokens(request)
        finally:
            in_flight -= 1

    async def work(url: str) -> Any:
        return await closed_loop(Target([url], "m"), [{}] * 10, 3, 10)

    records = asyncio.run(with_stand_in(counted, work))
    assert len(records) == 10 and all(r.ok for r in records)
    assert most == 3


def test_open_loop_sends_each_request_at_its_arrival_time() -> None:
    arrivals = [0.0, 0.1, 0.2, 0.3]

    async def work(url: str) -> Any:
        return await open_loop(Target([url], "m"), [{}] * 4, arrivals, 10)

    records = asyncio.run(with_stand_in(streams_three_tokens, work))
    for record, due in zip(records, arrivals, strict=True):
        assert due <= record.start_s < due + 0.05


def test_poisson_arrivals_are_seeded_and_average_the_rate() -> None:
    first = poisson_arrivals(4.0, 2000, random.Random(1))
    assert first == poisson_arrivals(4.0, 2000, random.Random(1))
    assert first[-1] / 2000 == pytest.approx(0.25, rel=0.1)
    with pytest.raises(ValueError, match="positive"):
        poisson_arrivals(0, 1, random.Random(1))


def test_requests_spread_over_the_targets_urls_in_turn() -> None:
    target = Target(["http://a", "http://b/"], "m")
    assert [target.chat_url(i) for i in range(3)] == [
        "http://a/v1/chat/completions",
        "http://b/v1/chat/completions",
        "http://a/v1/chat/completions",
    ]
