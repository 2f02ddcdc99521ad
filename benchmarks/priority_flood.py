"""Interactive chats while a bulk job floods the same replicas: what priority classes buy.

Two llama.cpp SmolLM2 replicas (a core and ``--slots`` slots each) behind two
``slurm-llm router`` processes (named keys; one with ``--interactive-reserve``, one without,
used one at a time). Interactive traffic: short streamed chats, seeded Poisson arrivals at
``--chat-rate`` per second, from the key ``chat`` (class interactive). The flood:
``--batches`` concurrent ``/v1/batch`` calls, one after another, each of twice as many items as
a replica has slots, so about ``batches`` times the replicas' capacity is always asked for.
Five phases of ``--phase-s`` seconds, side by side in one run:

  no flood                  interactive traffic alone
  flood alone               the flood alone: the batch throughput the replicas give
  flood, no priority        the flood from a key of class interactive, with the chats
  flood, priority           the flood from a key of class batch, with the chats
  flood, priority, reserve  the same through the router that keeps ``--interactive-reserve``
                            slots per replica from batch work while chats come

Reported per phase: interactive TTFT and end-to-end latency (p50, p99) and the flood's
completed items and tokens per second. Goals (issue 15): with priority, interactive p99 TTFT
within 1.5x of no flood, while the flood still gets at least 80 % of the capacity the
interactive traffic leaves free (its tokens/s with the chats against its tokens/s alone, scaled
by the share of the replicas' time the chats did not take).

    python benchmarks/priority_flood.py            # about 6 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from _report import RESULTS, machine_info, save_figure
from _servers import slurm_llm_router

from slurm_llm import ModelSpec, deploy
from slurm_llm._api_keys import KeysFile
from slurm_llm.bench import percentile

DEPLOYMENT = "bench-flood"
MODEL = "smollm2"
PHASES = ("no flood", "flood alone", "flood, no priority", "flood, priority",
          "flood, priority, reserve")  # fmt: skip
WITH_PRIORITY = ("flood, priority", "flood, priority, reserve")
CHATS = ("Say hello.", "Name a colour.", "What is 2 + 2?", "Name a fruit.", "Say goodbye.")


@dataclass
class Phase:
    name: str
    ttft_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    chat_errors: int = 0
    chat_tokens: int = 0
    flood_items: int = 0
    flood_tokens: int = 0
    flood_errors: int = 0
    wall_s: float = 0.0


async def chat(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    phase: Phase,
    rng: random.Random,
    tokens: int,
) -> None:
    """One streamed chat: its time to the first token and to the end."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": rng.choice(CHATS)}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    began = time.perf_counter()
    first: float | None = None
    try:
        async with session.post(
            f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as answer:
            if answer.status != 200:
                phase.chat_errors += 1
                return
            async for line in answer.content:
                if line.startswith(b"data:") and b'"content"' in line:  # a token event
                    first = first if first is not None else time.perf_counter() - began
                    phase.chat_tokens += 1
    except aiohttp.ClientError:
        phase.chat_errors += 1
        return
    phase.ttft_s.append(first if first is not None else time.perf_counter() - began)
    phase.latency_s.append(time.perf_counter() - began)


async def chats(url: str, key: str, phase: Phase, args: argparse.Namespace, stop: float) -> None:
    """Open loop, seeded Poisson arrivals, until ``stop``."""
    rng = random.Random(args.seed)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = []
        next_at = time.perf_counter()
        while (next_at := next_at + rng.expovariate(args.chat_rate)) < stop:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            tasks.append(asyncio.create_task(chat(session, url, key, phase, rng, args.chat_tokens)))
        await asyncio.gather(*tasks)


async def flood(url: str, key: str, phase: Phase, args: argparse.Namespace, stop: float) -> None:
    """``batches`` callers, each sending one ``/v1/batch`` after another until ``stop``."""
    items = [{"prompt": f"Count from {n} to {n + 40}:"} for n in range(args.slots * 2)]
    body = {
        "model": MODEL,
        "endpoint": "/v1/completions",
        "requests": items,
        "defaults": {"max_tokens": args.flood_tokens, "temperature": 0, "ignore_eos": True},
    }
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def caller() -> None:
            while time.perf_counter() < stop:
                async with session.post(
                    f"{url}/v1/batch", json=body, headers={"Authorization": f"Bearer {key}"}
                ) as answer:
                    result = json.loads(await answer.read())
                if time.perf_counter() > stop + 1:  # finished after the phase: not counted
                    return
                for item in result.get("results", []):
                    if item.get("status") == 200:
                        phase.flood_items += 1
                        phase.flood_tokens += item["response"]["usage"]["completion_tokens"]
                    else:
                        phase.flood_errors += 1

        await asyncio.gather(*(caller() for _ in range(args.batches)))


async def run_phase(name: str, url: str, keys: dict[str, str], args: argparse.Namespace) -> Phase:
    phase = Phase(name)
    began = time.perf_counter()
    stop = began + args.phase_s
    work = []
    if name != "flood alone":
        work.append(chats(url, keys["chat"], phase, args, stop))
    if name != "no flood":
        work.append(
            flood(
                url,
                keys["bulk-low" if name in WITH_PRIORITY else "bulk-same"],
                phase,
                args,
                stop,
            )
        )
    await asyncio.gather(*work)
    phase.wall_s = time.perf_counter() - began
    return phase


@contextmanager
def router(
    home: Path, keys_file: Path, args: argparse.Namespace, reserve: int, log: Path
) -> Iterator[str]:
    options = [
        "--deployment", DEPLOYMENT, "--replica-limit", str(args.slots), "--probe-interval", "0",
        "--max-queue", "100000", "--queue-timeout", "600", "--api-keys-file", str(keys_file),
        "--batch-aging", str(args.aging), "--interactive-reserve", str(reserve),
    ]  # fmt: skip
    with slurm_llm_router(options, log, home) as (url, _):
        yield url


def summary(phases: list[Phase]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for phase in phases:
        out[phase.name] = {
            "chats": len(phase.latency_s),
            "chat_errors": phase.chat_errors,
            "ttft_p50_s": percentile(phase.ttft_s, 50),
            "ttft_p99_s": percentile(phase.ttft_s, 99),
            "latency_p50_s": percentile(phase.latency_s, 50),
            "latency_p99_s": percentile(phase.latency_s, 99),
            "flood_items_per_s": phase.flood_items / phase.wall_s,
            "flood_tokens_per_s": phase.flood_tokens / phase.wall_s,
            "flood_errors": phase.flood_errors,
            "chat_tokens_per_s": phase.chat_tokens / phase.wall_s,
        }
    return out


def goals(figures: dict[str, dict[str, Any]], phase: str) -> dict[str, Any]:
    quiet, alone = figures["no flood"], figures["flood alone"]
    with_priority = figures[phase]
    ttft_ratio = (with_priority["ttft_p99_s"] or 0) / (quiet["ttft_p99_s"] or float("inf"))
    # The share of the replicas' token output the chats took when alone, of what the flood
    # alone shows they can give: what is left is the flood's fair share.
    chat_share = quiet["chat_tokens_per_s"] / alone["flood_tokens_per_s"]
    left = alone["flood_tokens_per_s"] * max(0.0, 1 - chat_share)
    flood_share = with_priority["flood_tokens_per_s"] / left if left else 0.0
    return {
        "interactive p99 TTFT with priority / without flood": round(ttft_ratio, 2),
        "goal: within 1.5x": ttft_ratio <= 1.5,
        "flood tokens/s with priority / capacity the chats leave": round(flood_share, 2),
        "goal: at least 0.8": flood_share >= 0.8,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, default=3, help="slots per replica")
    parser.add_argument("--reserve", type=int, default=1, help="the router's --interactive-reserve")
    parser.add_argument("--chat-rate", type=float, default=1.0, help="chats per second")
    parser.add_argument("--chat-tokens", type=int, default=8)
    parser.add_argument("--flood-tokens", type=int, default=32)
    parser.add_argument("--batches", type=int, default=3, help="concurrent /v1/batch callers")
    parser.add_argument("--phase-s", type=float, default=60.0)
    parser.add_argument("--aging", type=float, default=30.0, help="the router's --batch-aging")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    console = Console()
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="flood-") as scratch:
        home = Path(scratch)
        os.environ["SLURM_LLM_HOME"] = str(home)
        keys = KeysFile(home / "keys.toml")
        secrets = {
            "chat": keys.add("chat"),
            "bulk-same": keys.add("bulk-same"),
            "bulk-low": keys.add("bulk-low", priority="batch"),
        }
        spec = ModelSpec.preset(
            "smollm2-135m", cpus_per_replica=1, max_concurrent_requests=args.slots
        )
        console.print(f"deploying 2 llama.cpp replicas, {args.slots} slots each ...")
        with (
            deploy(spec, replicas=2, executor="local", name=DEPLOYMENT, progress=False),
            router(home, keys.path, args, 0, home / "router.log") as plain,
            router(home, keys.path, args, args.reserve, home / "reserve.log") as reserving,
        ):
            phases = []
            for name in PHASES:
                console.print(f"  {name} ({args.phase_s:g} s) ...")
                url = reserving if name.endswith("reserve") else plain
                phases.append(asyncio.run(run_phase(name, url, secrets, args)))
    figures = summary(phases)
    verdict = {phase: goals(figures, phase) for phase in WITH_PRIORITY}
    table = Table(title="Interactive chats and a /v1/batch flood, by phase")
    for column in (
        "phase",
        "chats",
        "TTFT p50 / p99 s",
        "latency p50 / p99 s",
        "flood items/s",
        "flood tok/s",
        "errors",
    ):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for name, row in figures.items():

        def pair(a: Any, b: Any) -> str:
            return "-" if a is None else f"{a:.2f} / {b:.2f}"

        table.add_row(
            name,
            str(row["chats"]),
            pair(row["ttft_p50_s"], row["ttft_p99_s"]),
            pair(row["latency_p50_s"], row["latency_p99_s"]),
            f"{row['flood_items_per_s']:.2f}",
            f"{row['flood_tokens_per_s']:.1f}",
            str(row["chat_errors"] + row["flood_errors"]),
        )
    console.print(table)
    console.print(verdict)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"priority_flood-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "machine": info,
                "settings": vars(args),
                "phases": figures,
                "goals": verdict,
                "raw": [asdict(p) for p in phases],
            },
            indent=1,
        )
    )
    figure, (ttft, flood_axis) = plt.subplots(1, 2, figsize=(12, 4))
    names = list(figures)
    ttft.bar(
        [n.replace(", ", ",\n") for n in names],
        [figures[n]["ttft_p99_s"] or 0 for n in names],
        color="tab:blue",
    )
    ttft.set_ylabel("interactive TTFT p99 (s)")
    flood_axis.bar(
        [n.replace(", ", ",\n") for n in names],
        [figures[n]["flood_tokens_per_s"] for n in names],
        color="tab:orange",
    )
    flood_axis.set_ylabel("flood tokens/s")
    save_figure(figure, out.with_suffix(".png"), "Priority classes under a batch flood", info)
    console.print(f"Saved {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
