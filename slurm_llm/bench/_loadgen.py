"""The async load generator: closed-loop users or Poisson arrivals, one record per request.

Each request is a streamed chat completion. Its time to first token is the time to the first
event that carries text; its inter-token gaps are the times between such events; its token count
is the server's ``usage`` when the stream includes it (``stream_options.include_usage``), else
the number of text events. Whatever happens to a request - an HTTP error, a refusal (429/503),
a broken or silent stream, a timeout - it ends as a record, never as a gap in the data.

Closed loop (``concurrency``): that many users, each sending its next request when the last one
ends, as in the paper's "concurrent users". Open loop (``rate``): arrivals drawn from a seeded
Poisson process, sent whether or not earlier ones finished, which is how a shared service is
actually loaded and what exposes queueing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from slurm_llm._sse import DONE, data_of
from slurm_llm.bench._results import RequestRecord

REFUSALS = (429, 503)


@dataclass(frozen=True)
class Target:
    """Where requests go: OpenAI API roots (``http://host:port`` or an nginx prefix such as
    ``http://host/smollm2``), used in turn, and the model they ask for."""

    urls: Sequence[str]
    model: str
    headers: dict[str, str] = field(default_factory=dict)

    def chat_url(self, index: int) -> str:
        return f"{self.urls[index % len(self.urls)].rstrip('/')}/v1/chat/completions"


async def send(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout: float, epoch: float
) -> RequestRecord:
    """One streamed request; times are measured from ``epoch`` (the level's start)."""
    start = time.perf_counter()
    events: list[float] = []
    usage: dict[str, Any] = {}

    def failed(error: str, rejected: bool = False) -> RequestRecord:
        return RequestRecord(
            start_s=start - epoch,
            ttft_s=events[0] - start if events else None,
            output_tokens=len(events),
            error=error,
            rejected=rejected,
        )

    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, json=body) as response:
                if response.status != 200:
                    said = (await response.read()).decode(errors="replace").strip()
                    return failed(
                        f"HTTP {response.status}: {said[:200]}", response.status in REFUSALS
                    )
                async for line in response.content:
                    data = data_of(line)
                    if data is None:
                        continue
                    if data == DONE:
                        break
                    event = json.loads(data)
                    if "error" in event:
                        return failed(f"error event: {json.dumps(event['error'])[:200]}")
                    if any(_text_of(choice) for choice in event.get("choices") or ()):
                        events.append(time.perf_counter())
                    if event.get("usage"):
                        usage = event["usage"]
                else:
                    return failed("the stream ended without [DONE]")
    except TimeoutError:
        return failed(f"no answer within {timeout:g} s")
    except (aiohttp.ClientError, json.JSONDecodeError) as error:
        return failed(f"{type(error).__name__}: {error}"[:200])
    end = time.perf_counter()
    if not events:
        return failed("the stream carried no text")
    return RequestRecord(
        start_s=start - epoch,
        ttft_s=events[0] - start,
        e2e_s=end - start,
        itl_s=[round(b - a, 6) for a, b in itertools.pairwise(events)],
        output_tokens=int(usage.get("completion_tokens") or len(events)),
        prompt_tokens=usage.get("prompt_tokens"),
    )


def _text_of(choice: dict[str, Any]) -> str:
    delta = choice.get("delta") or {}
    return str(delta.get("content") or delta.get("reasoning_content") or choice.get("text") or "")


def _session(target: Target) -> aiohttp.ClientSession:
    # No pool limit: the generator must never be the bottleneck. A new connection per request,
    # as vLLM's benchmark makes: a kept-alive one that the server closes while idle would fail
    # the next request for a reason that is the client's, not the server's (loopback connects
    # take ~0.1 ms).
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    return aiohttp.ClientSession(connector=connector, headers=target.headers)


async def closed_loop(
    target: Target,
    bodies: Sequence[dict[str, Any]],
    concurrency: int,
    timeout: float,
    done: Callable[[], None] = lambda: None,
) -> list[RequestRecord]:
    """``concurrency`` users share ``bodies``, each sending its next when its last one ends."""
    records: list[RequestRecord | None] = [None] * len(bodies)
    pending = iter(range(len(bodies)))
    async with _session(target) as session:
        epoch = time.perf_counter()

        async def user() -> None:
            for index in pending:
                url = target.chat_url(index)
                records[index] = await send(session, url, bodies[index], timeout, epoch)
                done()

        await asyncio.gather(*(user() for _ in range(concurrency)))
    return [r for r in records if r is not None]


def poisson_arrivals(rate: float, count: int, rng: random.Random) -> list[float]:
    """Send times (seconds from the start) of ``count`` arrivals at ``rate`` per second."""
    if rate <= 0:
        raise ValueError(f"a request rate is positive, not {rate}")
    times, now = [], 0.0
    for _ in range(count):
        now += rng.expovariate(rate)
        times.append(now)
    return times


async def open_loop(
    target: Target,
    bodies: Sequence[dict[str, Any]],
    arrivals: Sequence[float],
    timeout: float,
    done: Callable[[], None] = lambda: None,
) -> list[RequestRecord]:
    """Each body sent at its arrival time, however many are still running."""
    async with _session(target) as session:
        epoch = time.perf_counter()

        async def arrive(index: int) -> RequestRecord:
            await asyncio.sleep(max(0.0, epoch + arrivals[index] - time.perf_counter()))
            record = await send(session, target.chat_url(index), bodies[index], timeout, epoch)
            done()
            return record

        return list(await asyncio.gather(*(arrive(i) for i in range(len(bodies)))))
