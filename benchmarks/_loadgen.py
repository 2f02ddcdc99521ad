"""Streaming load generator, run as its own process so its CPU is not the router's.

``streams``: a closed loop of ``--concurrency`` clients, each sending one streamed chat request
after the other for ``--duration`` seconds; per request it records the time to the first SSE
chunk (TTFT) and to ``data: [DONE]`` (end to end). With ``--spread-s`` the clients start one
after the other over that many seconds: streams of equal length started together stay in step,
and their requests arrive in waves. ``hold``: ``--concurrency`` streamed requests
opened at once (one connection each) and held until they end, to see whether the proxy serves
them all. Both print one JSON object on stdout.

aiohttp on uvloop: one connection per client, kept alive between requests, as SDK clients do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from typing import Any

import aiohttp
import uvloop

BODY = {
    "model": "mock",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 16,
    "stream": True,
}


async def one_stream(
    session: aiohttp.ClientSession, url: str, chunks: int, timeout: float, model: str = "mock"
) -> tuple[float, float] | str:
    """(TTFT, end to end) in seconds, or what went wrong."""
    body = {**BODY, "model": model}
    start = time.perf_counter()
    first = 0.0
    seen = 0
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, json=body) as response:
                if response.status != 200:
                    said = (await response.read()).decode(errors="replace")
                    return f"HTTP {response.status}: {said[:120]}"
                async for line in response.content:
                    if not line.startswith(b"data: "):
                        continue
                    if not first:
                        first = time.perf_counter() - start
                    if line.startswith(b"data: [DONE]"):
                        if seen != chunks:
                            return f"{seen} of {chunks} chunks"
                        return first, time.perf_counter() - start
                    seen += 1
        return "stream ended without [DONE]"
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientError as error:
        return type(error).__name__


async def streams(args: argparse.Namespace) -> dict[str, Any]:
    ttft: list[float] = []
    e2e: list[float] = []
    errors: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers=auth(args)) as session:

        async def client(number: int) -> None:
            await asyncio.sleep(number * args.spread_s / args.concurrency)
            while (began := time.perf_counter()) < deadline:
                outcome = await one_stream(session, args.url, args.chunks, args.timeout, args.model)
                if began < measured_from:  # the others are still starting
                    continue
                if isinstance(outcome, str):
                    errors[outcome] = errors.get(outcome, 0) + 1
                    await asyncio.sleep(0.01)
                else:
                    ttft.append(outcome[0])
                    e2e.append(outcome[1])

        # Warm the connections first, so connection set-up is not counted as TTFT.
        await asyncio.gather(
            *(
                one_stream(session, args.url, args.chunks, args.timeout, args.model)
                for _ in range(args.concurrency)
            )
        )
        measured_from = time.perf_counter() + args.spread_s  # every client running
        deadline = measured_from + args.duration
        await asyncio.gather(*(client(number) for number in range(args.concurrency)))
    return {"ttft": ttft, "e2e": e2e, "errors": errors, "seconds": args.duration}


async def hold(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=auth(args)) as session:
        outcomes = await asyncio.gather(
            *(
                one_stream(session, args.url, args.chunks, args.timeout, args.model)
                for _ in range(args.concurrency)
            )
        )
    errors: dict[str, int] = {}
    done = [o for o in outcomes if not isinstance(o, str)]
    for outcome in outcomes:
        if isinstance(outcome, str):
            errors[outcome] = errors.get(outcome, 0) + 1
    return {
        "completed": len(done),
        "errors": errors,
        "wall_s": time.perf_counter() - start,
        "e2e": [o[1] for o in done],
    }


def auth(args: argparse.Namespace) -> dict[str, str]:
    return {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["streams", "hold"])
    parser.add_argument("--url", required=True, help="the chat completions URL")
    parser.add_argument("--model", default="mock", help="the model field of each request")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--chunks", type=int, default=8, help="chunks the upstream sends")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument(
        "--spread-s", type=float, default=0.0,
        help="streams: the clients' first requests spread evenly over this many seconds",
    )  # fmt: skip
    parser.add_argument("--api-key", help="sent as Authorization: Bearer KEY with every request")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run = streams if args.mode == "streams" else hold
    json.dump(uvloop.run(run(args)), sys.stdout)


if __name__ == "__main__":
    main()
