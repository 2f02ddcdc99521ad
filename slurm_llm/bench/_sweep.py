"""A sweep: the same seeded workload at rising load, one level after the other.

Before the first level the prompt filler is sized to the workload's length in the model's own
tokens, and one request warms the servers (loads, compiles, allocates) without being counted.
Each level then gets fresh connections and its own seeded prompts, so a level can be re-run
alone and get the same requests. A level where most requests failed or were refused ends the
sweep: higher loads would only fail more, and the run says so in its notes.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from slurm_llm._errors import SlurmLLMError, SpecError
from slurm_llm.bench._loadgen import Target, closed_loop, open_loop, poisson_arrivals, send
from slurm_llm.bench._machine import machine_info
from slurm_llm.bench._results import BenchRun, LevelResult, SweepSettings, TargetInfo
from slurm_llm.bench._saturation import capacity_at_targets, saturation_point
from slurm_llm.bench._stats import summarise_level
from slurm_llm.bench._workloads import Messages, Workload, request_body, workload

PROBE_WORDS = 256
PROBES = 4
RATE_LEVEL_SECONDS = 60  # default arrivals per rate level: a minute's worth


def requests_for(settings: SweepSettings, load: float) -> int:
    """How many requests a level sends: the fixed count, or enough for every user to send
    ``rounds`` requests (a minute of arrivals for a rate), and never fewer than
    ``min_requests`` so that percentiles rest on more than a handful."""
    if settings.requests_per_level is not None:
        return settings.requests_per_level
    per_load = (
        settings.rounds * load if settings.mode == "concurrency" else RATE_LEVEL_SECONDS * load
    )
    return max(settings.min_requests, math.ceil(per_load))


def tagged(messages: Messages, nonce: str) -> Messages:
    """``messages`` with the run's nonce starting the first one."""
    first, *rest = messages
    return [{**first, "content": f"[{nonce}] {first['content']}"}, *rest]


async def _prompt_tokens(
    session: aiohttp.ClientSession,
    target: Target,
    kind: Workload,
    words: int,
    nonce: str,
    seed: str = "",
) -> int:
    messages = tagged(kind.messages(random.Random(f"probe:{seed}"), words, 0), nonce)
    body = request_body(target.model, messages, 1, False, stream=False)
    async with session.post(target.chat_url(0), json=body) as response:
        answer: dict[str, Any] = await response.json(content_type=None)
        if response.status != 200:
            raise SlurmLLMError(
                f"sizing the prompts failed (is the model's context shorter than the prompt "
                f"and answer asked for?): HTTP {response.status}: {answer}"
            )
    tokens = (answer.get("usage") or {}).get("prompt_tokens")
    if not isinstance(tokens, int):
        raise SlurmLLMError(
            f"{target.urls[0]} does not report usage.prompt_tokens, needed to size prompts in "
            "tokens; use a workload with short prompts (short-chat, long-generation)"
        )
    return tokens


async def filler_words(target: Target, kind: Workload, prompt_tokens: int, nonce: str) -> int:
    """The filler length that makes ``kind``'s prompts ``prompt_tokens`` long on average.

    Tokens grow linearly with filler words, but random texts of the same length differ by about
    5 % in tokens, so the slope is the mean of ``PROBES`` texts, not one."""
    async with aiohttp.ClientSession(headers=target.headers) as session:
        base = await _prompt_tokens(session, target, kind, 0, nonce)
        if prompt_tokens <= base:
            raise SpecError(
                f"the {kind.name} prompt takes {base} tokens before any filler; ask for more "
                f"than {prompt_tokens} prompt tokens"
            )
        # Probes well under the target (Lorem Ipsum takes about 2 tokens a word), so they fit
        # any context that the prompts themselves fit.
        probe_words = max(8, min(PROBE_WORDS, (prompt_tokens - base) // 3))
        probes = [
            await _prompt_tokens(session, target, kind, probe_words, nonce, str(i))
            for i in range(PROBES)
        ]
    per_word = (statistics.fmean(probes) - base) / probe_words
    return max(1, round((prompt_tokens - base) / per_word))


async def _sweep(
    target: Target, settings: SweepSettings, progress: Progress, notes: list[str]
) -> list[LevelResult]:
    kind = workload(settings.workload, settings.seed)
    prompt_tokens = settings.prompt_tokens or kind.prompt_tokens
    output_tokens = settings.output_tokens or kind.output_tokens
    words = await filler_words(target, kind, prompt_tokens, settings.nonce) if prompt_tokens else 0

    def bodies(level: int, count: int) -> list[dict[str, Any]]:
        rng = random.Random(f"{settings.seed}:{level}")
        return [
            request_body(
                target.model,
                tagged(kind.messages(rng, words, i), settings.nonce),
                output_tokens,
                settings.ignore_eos,
            )
            for i in range(count)
        ]

    async with aiohttp.ClientSession(headers=target.headers) as session:
        warm = await send(session, target.chat_url(0), bodies(-1, 1)[0], settings.timeout_s, 0)
    if not warm.ok:
        raise SlurmLLMError(f"the warm-up request failed: {warm.error}")

    levels: list[LevelResult] = []
    for index, load in enumerate(settings.levels):
        count = requests_for(settings, load)
        task = progress.add_task(f"{settings.mode} {load:g}", total=count)

        def done(task_id: Any = task) -> None:
            progress.advance(task_id)

        requests = bodies(index, count)
        if settings.mode == "concurrency":
            records = await closed_loop(target, requests, int(load), settings.timeout_s, done)
            level = summarise_level(records, settings.targets, concurrency=int(load))
        else:
            arrivals = poisson_arrivals(load, count, random.Random(f"{settings.seed}:{index}:t"))
            records = await open_loop(target, requests, arrivals, settings.timeout_s, done)
            level = summarise_level(records, settings.targets, rate=load)
        levels.append(level)
        failed = level.requests - level.completed
        if failed > settings.stop_error_rate * level.requests:
            first = next(r.error for r in records if r.error)
            notes.append(
                f"stopped after load {load:g}: {failed} of {level.requests} requests failed or "
                f"were refused (first: {first})"
            )
            break
    return levels


def run_sweep(
    target: Target,
    info: TargetInfo,
    settings: SweepSettings,
    label: str,
    console: Console | None = None,
) -> BenchRun:
    """Runs every level of ``settings`` against ``target``; the result holds every request."""
    if not settings.levels:
        raise SpecError("a sweep needs at least one load level")
    if settings.mode == "concurrency" and any(lv < 1 or lv != int(lv) for lv in settings.levels):
        raise SpecError(f"concurrency levels are whole numbers >= 1, not {settings.levels}")
    notes: list[str] = []
    columns = (
        TextColumn("{task.description:>18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    )  # fmt: skip
    with Progress(*columns, console=console or Console(stderr=True), transient=False) as progress:
        levels = asyncio.run(_sweep(target, settings, progress, notes))
    return BenchRun(
        label=label,
        machine=machine_info(("slurm-llm", "xllamacpp", "aiohttp")),
        target=info,
        settings=settings,
        levels=levels,
        saturation=saturation_point(levels),
        slo_capacity=capacity_at_targets(levels, settings.targets),
        notes=notes,
    )
