"""How a sweep sizes its prompts and how many requests each level sends."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from slurm_llm.bench import SweepSettings, Target
from slurm_llm.bench._sweep import filler_words, requests_for
from slurm_llm.bench._workloads import workload
from tests.unit.bench.test_loadgen import with_stand_in

CONTEXT = 300


async def counts_two_tokens_a_word(request: web.Request) -> web.StreamResponse:
    """A stand-in server whose tokenizer makes 10 tokens of the template plus 2 per word, with a
    context of 300 tokens."""
    body = await request.json()
    words = sum(len(m["content"].split()) for m in body["messages"])
    tokens = 10 + 2 * words
    if tokens > CONTEXT:
        return web.json_response({"error": "too long"}, status=400)
    return web.json_response({"usage": {"prompt_tokens": tokens}})


def test_prompts_are_sized_in_tokens_with_probes_that_fit_the_context() -> None:
    async def work(url: str) -> Any:
        return await filler_words(Target([url], "m"), workload("translation"), 250, "n0nce")

    # A probe longer than the context would be refused, and the sizing would fail.
    words = asyncio.run(with_stand_in(counts_two_tokens_a_word, work))
    instruction = 8  # "[n0nce] Translate this Lorem Ipsum text into English:"
    assert abs(10 + 2 * (instruction + words) - 250) <= 2


def settings(**fields: Any) -> SweepSettings:
    return SweepSettings(workload="translation", mode="concurrency", levels=[1], **fields)


def test_each_user_sends_rounds_of_requests_but_never_fewer_than_the_minimum() -> None:
    assert requests_for(settings(rounds=4, min_requests=16), 8) == 32
    assert requests_for(settings(rounds=4, min_requests=16), 2) == 16
    assert requests_for(settings(requests_per_level=5), 64) == 5


def test_a_rate_level_sends_a_minute_of_arrivals() -> None:
    by_rate = SweepSettings(workload="translation", mode="rate", levels=[0.5], min_requests=4)
    assert requests_for(by_rate, 0.5) == 30
