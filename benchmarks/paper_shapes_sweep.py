"""The paper's study on its own model shapes: Llama 3.2 1B/3B and 3.1 8B/70B on vLLM, dummy weights.

For each shape, ``slurm-llm bench models`` writes a config-only folder (SmolLM2's tokenizer) and
the shipped preset deploys it with ``--load-format dummy``: random weights of the real shape,
GPUs and tensor parallelism derived by the preset from the model's size, on SLURM when
``sbatch`` answers. ``slurm-llm bench``'s sweep then runs the paper's workload (1024-token
translation prompts) straight at the replica, at 1 to 256 concurrent users, and the table sets
each saturation point next to the paper's (4x A100, INT8 W8A8 weights):

    1B: 128 users at 36 ms   3B: 49 at 85 ms   8B: 20 at 336 ms   70B: 2 at 2131 ms

Differences to state beside any comparison: bf16 dummy weights (not INT8), a vocabulary of
49,152 tokens (not 128,256), this machine's GPUs, and our saturation rule (see
``slurm_llm/bench/_saturation.py``), which is not the paper's eye.

    python benchmarks/paper_shapes_sweep.py                                     # GPUs, all four
    python benchmarks/paper_shapes_sweep.py --device cpu --shapes llama-3.2-1b \\
        --levels 1,2 --prompt-tokens 128 --output-tokens 8                       # a CPU trial
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from _report import RESULTS

from slurm_llm import ModelSpec, deploy
from slurm_llm.bench import (
    PAPER_SHAPES,
    BenchRun,
    SweepSettings,
    plot_runs,
    run_sweep,
    save_run,
    url_target,
    write_dummy_model,
)
from slurm_llm.bench._cli import levels
from slurm_llm.bench._report import level_table

REPO = Path(__file__).parent.parent
# The paper's saturation points: concurrent users, and latency per token in seconds.
PAPER = {
    "llama-3.2-1b": (128, 0.036),
    "llama-3.2-3b": (49, 0.085),
    "llama-3.1-8b": (20, 0.336),
    "llama-3.1-70b": (2, 2.131),
}


def spec_for(shape: str, model: Path, args: argparse.Namespace) -> ModelSpec:
    overrides: dict[str, Any] = {
        "model": str(model),
        "precision": "bf16",  # dummy weights are not quantised
        "engine_args": ["--load-format", "dummy", "--enforce-eager"],
        "context_length": args.prompt_tokens + args.output_tokens + 256,
    }
    if args.device == "cpu":
        overrides |= {
            "device": "cpu",
            "engine_env": str(args.vllm_env),
            "cpus_per_replica": os.cpu_count() or 1,
            "mem_gb": 12,
            "max_concurrent_requests": max(int(level) for level in args.levels),
            "env": {
                "VLLM_CPU_KVCACHE_SPACE": "2",
                "HF_HUB_OFFLINE": "1",
                "VLLM_CACHE_ROOT": str(REPO / ".cache" / "vllm"),
            },
        }
    return ModelSpec.preset(shape, **overrides)


def sweep_shape(shape: str, args: argparse.Namespace, models: Path, console: Console) -> BenchRun:
    folder = write_dummy_model(models / shape, shape, args.tokenizer)
    spec = spec_for(shape, folder, args)
    with deploy(
        spec, replicas=1, executor=args.executor, name=f"paper-{shape}", progress=False,
        timeout=args.ready_timeout,
    ) as deployment:  # fmt: skip
        [url] = deployment.endpoints
        target, info = url_target(url, spec.name, "direct", engine="vllm", replicas=1)
        settings = SweepSettings(
            workload="translation",
            mode="concurrency",
            levels=args.levels,
            rounds=args.rounds,
            min_requests=args.min_requests,
            prompt_tokens=args.prompt_tokens,
            output_tokens=args.output_tokens,
        )
        run = run_sweep(target, info, settings, f"{shape}-{args.device}", console=console)
    console.print(level_table(run))
    saved = save_run(run, RESULTS, f"paper_shapes-{shape}-{time.strftime('%Y%m%d-%H%M%S')}")
    console.print(f"Saved {saved}")
    return run


def beside_the_paper(runs: list[BenchRun]) -> tuple[Table, dict[str, Any]]:
    table = Table(title="Saturation points: this run against the paper (4x A100, INT8)")
    for column in ("shape", "paper users", "paper ms/token", "our users", "our TPOT p50 ms",
                   "our peak tok/s"):  # fmt: skip
        table.add_column(column, justify="right")
    rows: dict[str, Any] = {}
    for run in runs:
        shape = run.label.rsplit("-", 1)[0]
        users, latency = PAPER[shape]
        at = {level.load: level for level in run.levels}.get(run.saturation.load or -1)
        ours = at.tpot.p50 if at and at.tpot.p50 is not None else None
        peak = run.peak_throughput
        rows[shape] = {
            "paper": {"users": users, "latency_s": latency},
            "ours": {"users": run.saturation.load, "tpot_p50_s": ours, "peak_tok_s": peak},
        }
        table.add_row(
            shape, str(users), f"{latency * 1000:.0f}",
            "-" if run.saturation.load is None else f"{run.saturation.load:g}",
            "-" if ours is None else f"{ours * 1000:.0f}", f"{peak:.0f}",
        )  # fmt: skip
    return table, rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default=",".join(PAPER_SHAPES))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--executor", choices=("auto", "local", "slurm"), default="auto")
    parser.add_argument("--levels", type=levels, default=levels("1,2,4,8,16,32,64,128,256"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--min-requests", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--ready-timeout", type=float, default=1800)
    parser.add_argument(
        "--tokenizer", type=Path, default=REPO / ".cache" / "smollm2-hf",
        help="a folder with tokenizer.json: `slurm-llm prepare-model` makes SmolLM2's",
    )  # fmt: skip
    parser.add_argument(
        "--models", type=Path, default=Path.home() / ".cache" / "slurm-llm" / "models" / "dummy",
        help="where the config-only model folders go: storage the compute nodes share",
    )  # fmt: skip
    parser.add_argument("--vllm-env", type=Path, default=REPO / ".venvs" / "vllm-cpu")
    args = parser.parse_args()
    console = Console(width=150)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = [sweep_shape(shape, args, args.models, console) for shape in args.shapes.split(",")]
    table, rows = beside_the_paper(runs)
    console.print(table)
    out = RESULTS / f"paper_shapes-{args.device}-{stamp}.json"
    out.write_text(
        json.dumps({"beside_the_paper": rows, "runs": [r.label for r in runs]}, indent=2)
    )
    for path in plot_runs(runs, out.with_suffix("")):
        console.print(f"Plotted {path}")
    console.print(f"Saved {out}")


if __name__ == "__main__":
    main()
