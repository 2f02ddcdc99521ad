"""A durable batch against the same requests sent by the load generator at saturation.

Two llama.cpp SmolLM2 replicas (a core and ``--slots`` slots each) behind ``slurm-llm router``
(its own process and home). The same ``--lines`` chat requests (``--tokens`` tokens each,
``ignore_eos``) run twice, side by side in one run:

  load generator  ``slurm-llm bench``'s closed loop at the saturation concurrency, found first
                  by a short sweep over concurrencies (the knee rule of ``slurm-llm bench``)
  batch           one input file through ``/v1/files`` and ``/v1/batches``, from create until
                  ``completed``

Reported: output tokens per second of each, their ratio (goal, issue 16: the batch at least
95 % of the load generator), and the router's resident memory while the batch runs, sampled
every second against the lines done (goal: flat from the first line to the last).

    python benchmarks/batch_throughput.py        # about 8 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import openai
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from _report import RESULTS, machine_info, save_figure
from _servers import rss_mib, slurm_llm_router

from slurm_llm import ModelSpec, deploy
from slurm_llm.batches._batch_store import ENDED
from slurm_llm.bench._loadgen import Target, closed_loop
from slurm_llm.bench._results import LatencyTargets, LevelResult
from slurm_llm.bench._saturation import saturation_point
from slurm_llm.bench._stats import summarise_level

DEPLOYMENT = "bench-batch"
MODEL = "smollm2"


def bodies(count: int, tokens: int, offset: int = 0) -> list[dict[str, Any]]:
    return [
        {"model": MODEL, "max_tokens": tokens, "ignore_eos": True, "temperature": 0,
         "messages": [{"role": "user", "content": f"Tell me about the number {offset + n}."}]}
        for n in range(count)
    ]  # fmt: skip


def streamed(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "stream": True, "stream_options": {"include_usage": True}}


def load_generator(url: str, requests: list[dict[str, Any]], concurrency: int) -> LevelResult:
    records = asyncio.run(
        closed_loop(Target([url], MODEL), [streamed(b) for b in requests], concurrency, 600)
    )
    return summarise_level(records, LatencyTargets(), concurrency=concurrency)


def batch_file(requests: list[dict[str, Any]]) -> bytes:
    return b"".join(
        json.dumps({"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}).encode() + b"\n"
        for n, body in enumerate(requests)
    )  # fmt: skip


def run_batch(url: str, content: bytes, pid: int) -> dict[str, Any]:
    """Create to completed: wall time, output tokens, and the router's memory per second."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    source = client.files.create(file=("input.jsonl", io.BytesIO(content)), purpose="batch")
    began = time.perf_counter()
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")  # fmt: skip
    memory: list[tuple[float, int, float]] = []  # (seconds, lines done, MiB)
    while True:
        batch = client.batches.retrieve(batch.id)
        counts = batch.request_counts
        done = counts.completed + counts.failed if counts else 0
        memory.append((time.perf_counter() - began, done, rss_mib(pid)))
        if batch.status in ENDED:
            break
        time.sleep(1.0)
    wall = time.perf_counter() - began
    output = batch.usage.output_tokens if batch.usage else 0
    return {"status": batch.status, "wall_s": wall, "output_tokens": output,
            "failed": batch.request_counts.failed if batch.request_counts else None,
            "output_token_throughput": output / wall, "memory": memory}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=8, help="output tokens per request")
    parser.add_argument("--slots", type=int, default=4, help="slots per replica")
    parser.add_argument("--sweep-requests", type=int, default=120, help="per sweep level")
    args = parser.parse_args()
    console = Console()
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as scratch:
        home = Path(scratch)
        spec = ModelSpec.preset("smollm2-135m", cpus_per_replica=1,
                                max_concurrent_requests=args.slots)  # fmt: skip
        console.print(f"deploying 2 llama.cpp replicas, {args.slots} slots each ...")
        options = ["--deployment", DEPLOYMENT, "--probe-interval", "0", "--max-queue", "100000",
                   "--queue-timeout", "600"]  # fmt: skip
        with (
            deploy(
                spec, replicas=2, executor="local", name=DEPLOYMENT, progress=False, home=home
            ),  # fmt: skip
            slurm_llm_router(options, home / "router.log", home) as (url, router),
        ):
            capacity = 2 * args.slots
            sweep = []
            for concurrency in (capacity // 2, capacity, 2 * capacity, 4 * capacity):
                console.print(f"  sweep: {concurrency} users ...")
                level = load_generator(url, bodies(args.sweep_requests, args.tokens, 10**6),
                                       concurrency)  # fmt: skip
                sweep.append(level)
            knee = saturation_point(sweep)
            concurrency = int(knee.load or 2 * capacity)
            requests = bodies(args.lines, args.tokens)
            console.print(f"  load generator: {args.lines} requests, {concurrency} users "
                          f"({knee.reason}) ...")  # fmt: skip
            generator = load_generator(url, requests, concurrency)
            console.print(f"  batch: {args.lines} lines ...")
            batch = run_batch(url, batch_file(requests), router.pid)
    ratio = batch["output_token_throughput"] / generator.output_token_throughput
    rss = [mib for _, _, mib in batch["memory"]]
    early = [mib for _, done, mib in batch["memory"] if 0 < done <= args.lines // 10] or rss[:1]
    late = [mib for _, done, mib in batch["memory"] if done >= args.lines * 9 // 10] or rss[-1:]
    growth = max(late) - max(early)
    table = Table(title=f"{args.lines} requests of {args.tokens} tokens on 2 replicas")
    for column in ("", "wall s", "output tok/s", "failed"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row(f"load generator, {concurrency} users", f"{generator.wall_s:.1f}",
                  f"{generator.output_token_throughput:.1f}", str(generator.errors))  # fmt: skip
    table.add_row("batch (/v1/batches)", f"{batch['wall_s']:.1f}",
                  f"{batch['output_token_throughput']:.1f}", str(batch["failed"]))  # fmt: skip
    console.print(table)
    verdict = {
        "batch / load generator": round(ratio, 3),
        "goal: at least 0.95": ratio >= 0.95,
        "router memory, first 10 % of lines (MiB)": round(max(early), 1),
        "router memory, last 10 % of lines (MiB)": round(max(late), 1),
        "growth (MiB)": round(growth, 1),
    }
    console.print(verdict)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"batch_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "machine": info, "settings": vars(args), "concurrency": concurrency,
        "saturation": knee.model_dump(),
        "sweep": [level.model_dump(exclude={"records"}) for level in sweep],
        "load_generator": generator.model_dump(exclude={"records"}), "batch": batch,
        "goals": verdict,
    }, indent=1, default=str))  # fmt: skip
    figure, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4))
    speed.bar(["load generator", "batch"],
              [generator.output_token_throughput, batch["output_token_throughput"]])  # fmt: skip
    speed.set_ylabel("output tokens/s")
    memory.plot([done for _, done, _ in batch["memory"]], rss, marker=".")
    memory.set_xlabel("lines done")
    memory.set_ylabel("router resident memory (MiB)")
    save_figure(figure, out.with_suffix(".png"), "A durable batch against the load generator",
                info)  # fmt: skip
    console.print(f"Saved {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
