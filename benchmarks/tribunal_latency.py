"""What a tribunal round costs, in units of one generation.

A round is generate → critique (one critic per law) → revise. With the critics sent at once to
replicas that batch requests, a 3-law round should cost close to 3 calls' time (generate, one
batch of critics, revise), not 5 (generate, 3 critics in turn, revise). Measured side by side,
round by round, on 2 real llama.cpp replicas of SmolLM2 behind an in-process router:
  single generation                 one answer, as without a tribunal;
  critics in parallel / in turn     the 3 laws of the academic book judging that answer;
  revision                          one rewrite against all 3 laws;
  round, parallel critics           generation + critics in parallel + revision;
  round, sequential critics         generation + critics in turn + revision.

    python benchmarks/tribunal_latency.py --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from _report import describe, machine_info, report_seconds

from slurm_llm import ModelSpec, deploy
from slurm_llm.router import RouterThread
from slurm_llm.tribunal import LawBook, RouterClient, Tribunal, TribunalConfig

PROMPT = "Explain in three sentences why the sky is blue."


async def measure(url: str, rounds: int, tokens: int) -> dict[str, list[float]]:
    book = LawBook.named("academic")
    timings: dict[str, list[float]] = {name: [] for name in (
        "single generation", "critics in parallel", "critics in turn", "revision",
    )}  # fmt: skip
    async with aiohttp.ClientSession() as session:
        client = RouterClient(session, url)
        config = TribunalConfig(generator="smollm2", answer_tokens=tokens, critic_tokens=tokens)
        tribunal = Tribunal(client.complete, book, config)
        for _ in range(rounds):
            started = time.perf_counter()
            draft = await client.complete("smollm2", [{"role": "user", "content": PROMPT}], tokens)
            timings["single generation"].append(time.perf_counter() - started)
            started = time.perf_counter()
            verdicts = await asyncio.gather(
                *(tribunal.judge(law, PROMPT, draft) for law in book.laws)
            )
            timings["critics in parallel"].append(time.perf_counter() - started)
            started = time.perf_counter()
            for law in book.laws:
                await tribunal.judge(law, PROMPT, draft)
            timings["critics in turn"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await tribunal.revise(PROMPT, draft, list(verdicts))
            timings["revision"].append(time.perf_counter() - started)
    single, parallel = timings["single generation"], timings["critics in parallel"]
    turn, revision = timings["critics in turn"], timings["revision"]
    timings["round, parallel critics"] = [
        a + b + c for a, b, c in zip(single, parallel, revision, strict=True)
    ]
    timings["round, sequential critics"] = [
        a + b + c for a, b, c in zip(single, turn, revision, strict=True)
    ]
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of every call")
    args = parser.parse_args()
    console = Console()
    info = machine_info(("slurm-llm", "xllamacpp", "aiohttp"))
    console.print(f"Machine: {describe(info)}")
    with tempfile.TemporaryDirectory() as home:
        spec = ModelSpec.preset("smollm2-135m")
        deployment = deploy(spec, replicas=2, executor="local", name="bench-tribunal",
                            progress=False, home=Path(home))  # fmt: skip
        router = RouterThread(home=Path(home), deployment="bench-tribunal")
        with deployment, router:
            timings = asyncio.run(measure(router.url, args.rounds, args.tokens))
    single = statistics.median(timings["single generation"])
    for name in ("round, parallel critics", "round, sequential critics"):
        console.print(f"{name}: {statistics.median(timings[name]) / single:.2f} single generations")
    report_seconds(
        "tribunal_latency",
        f"Tribunal round (3 laws, {args.tokens}-token calls) vs one generation, 2 replicas",
        timings,
        {
            "single generation": "single",
            "round, parallel critics": "round, parallel",
            "round, sequential critics": "round, in turn",
        },
        info,
        console,
    )


if __name__ == "__main__":
    main()
