"""``slurm-llm bench``: sweep a deployment, plot and compare runs, make paper-sized models."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from slurm_llm._errors import SpecError
from slurm_llm.bench._loadgen import Target
from slurm_llm.bench._plots import plot_runs
from slurm_llm.bench._report import compare_table, level_table
from slurm_llm.bench._results import LatencyTargets, SweepSettings, TargetInfo, load_run, save_run
from slurm_llm.bench._shapes import LLAMA3_VOCAB, PAPER_SHAPES, SMOLLM2_VOCAB, write_dummy_model
from slurm_llm.bench._sweep import run_sweep
from slurm_llm.bench._targets import deployment_target, front_end_target, url_target
from slurm_llm.bench._workloads import workloads
from slurm_llm.spec._smollm2 import GGUF_FILENAME

console = Console()
DEFAULT_CONCURRENCY = "1,2,4,8,16,32,64"
DEFAULT_TOKENIZER = "~/.cache/slurm-llm/models/SmolLM2-135M-Instruct"


def levels(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return sorted(set(values))


def target_from(args: argparse.Namespace) -> tuple[Target, TargetInfo]:
    key = args.api_key or os.environ.get("SLURM_LLM_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if args.deployment:
        target, info = deployment_target(args.deployment, headers=headers)
        if args.model and args.model != info.model:
            raise SpecError(
                f"deployment {args.deployment!r} serves {info.model!r}, not {args.model!r}"
            )
        return target, info
    if args.front_end_job:
        return front_end_target(args.front_end_job, args.model, headers=headers)
    return url_target(
        args.url, args.model, args.front_end, headers=headers, engine=args.engine,
        replicas=args.replicas,
    )  # fmt: skip


def cmd_run(args: argparse.Namespace) -> int:
    target, info = target_from(args)
    settings = SweepSettings(
        workload=args.workload,
        mode="rate" if args.rate else "concurrency",
        levels=args.rate or args.concurrency,
        requests_per_level=args.requests,
        rounds=args.rounds,
        min_requests=args.min_requests,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        ignore_eos=not args.no_ignore_eos,
        seed=args.seed,
        timeout_s=args.timeout,
        targets=LatencyTargets(ttft_s=args.ttft_target, tpot_s=args.tpot_target_ms / 1000),
    )
    label = args.label or f"{info.engine}-{info.front_end}-{info.replicas or 1}x-{args.workload}"
    run = run_sweep(target, info, settings, label, console=console)
    console.print(level_table(run))
    for note in run.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    saved = save_run(run, Path(args.out))
    console.print(f"Saved {saved} and {saved.with_suffix('.csv')}")
    if not args.no_plots:
        for path in plot_runs([run], saved.with_suffix("")):
            console.print(f"Plotted {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    runs = [load_run(Path(path)) for path in args.runs]
    stem = Path(args.out) if args.out else Path(args.runs[0]).with_suffix("")
    for path in plot_runs(runs, stem):
        console.print(f"Plotted {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    runs = [load_run(Path(path)) for path in args.runs]
    console.print(compare_table(runs))
    if args.plot:
        for path in plot_runs(runs, Path(args.plot)):
            console.print(f"Plotted {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    for shape in args.shapes or list(PAPER_SHAPES):
        dest = write_dummy_model(
            Path(args.dest) / shape, shape, Path(args.tokenizer), args.vocab_size
        )
        console.print(f"{shape}: {dest}  (serve with --load-format dummy)")
    return 0


def add_bench_command(commands: Any) -> None:
    """Adds ``bench`` and its sub-commands to the main CLI."""
    text = "Benchmark a deployment: latency and throughput against load, saturation points."
    bench = commands.add_parser("bench", help=text, description=text)
    subs = bench.add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")

    run = subs.add_parser("run", help="sweep load levels against a deployment, router or URL")
    run.set_defaults(handler=cmd_run)
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--deployment", help="its replicas directly, in turn (no front end)")
    where.add_argument(
        "--front-end-job", metavar="NAME",
        help="a router or nginx job started with --submit, found by its published address",
    )  # fmt: skip
    where.add_argument("--url", help="an OpenAI API root: http://host:port, or an nginx prefix")
    run.add_argument("--model", help="the model to ask for (default: the only one served)")
    run.add_argument(
        "--front-end", choices=("router", "nginx", "direct", "url"), default="url",
        help="what --url is, for the record and the plots",
    )  # fmt: skip
    run.add_argument("--engine", default="unknown", help="the engine behind --url, for the record")
    run.add_argument("--replicas", type=int, help="replicas behind --url, for the record")
    run.add_argument("--api-key", help="default: $SLURM_LLM_API_KEY")
    run.add_argument("--workload", choices=list(workloads()), default="translation")
    load = run.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency", type=levels, default=levels(DEFAULT_CONCURRENCY),
        help=f"concurrent users per level, comma-separated (default {DEFAULT_CONCURRENCY})",
    )  # fmt: skip
    load.add_argument("--rate", type=levels, help="Poisson request rates per level (req/s)")
    run.add_argument("--requests", type=int, help="requests per level (default: see --rounds)")
    run.add_argument(
        "--rounds", type=int, default=4,
        help="requests per user per level (rate mode: a minute of arrivals)",
    )  # fmt: skip
    run.add_argument("--min-requests", type=int, default=16, help="fewest requests per level")
    run.add_argument(
        "--prompt-tokens", type=int, help="default: the workload's (1024 for translation)"
    )
    run.add_argument(
        "--output-tokens", type=int, help="tokens per answer (default: the workload's)"
    )
    run.add_argument(
        "--no-ignore-eos", action="store_true",
        help="let answers end early (default: exactly --output-tokens each)",
    )  # fmt: skip
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    run.add_argument("--ttft-target", type=float, default=2.0, help="seconds, for goodput")
    run.add_argument("--tpot-target-ms", type=float, default=100.0, help="ms/token, for goodput")
    run.add_argument("--label", help="the run's name in files, tables and legends")
    run.add_argument("--out", default="bench-results", help="folder for JSON, CSV and plots")
    run.add_argument("--no-plots", action="store_true", help="JSON and CSV only")

    plot = subs.add_parser("plot", help="draw Figures 3 and 4 for one or more runs")
    plot.set_defaults(handler=cmd_plot)
    plot.add_argument("runs", nargs="+", help="JSON files written by `bench run`")
    plot.add_argument("--out", help="file stem (default: the first run's)")

    compare = subs.add_parser("compare", help="runs side by side, ratios to the first")
    compare.set_defaults(handler=cmd_compare)
    compare.add_argument("runs", nargs="+", help="JSON files written by `bench run`")
    compare.add_argument("--plot", metavar="STEM", help="also draw both figures with every run")

    models = subs.add_parser(
        "models", help="paper-sized model directories for vLLM's dummy weights (no download)"
    )
    models.set_defaults(handler=cmd_models)
    models.add_argument("shapes", nargs="*", choices=[[], *PAPER_SHAPES], help="default: all")
    models.add_argument("--dest", default="~/.cache/slurm-llm/models/dummy")
    models.add_argument(
        "--tokenizer", default=DEFAULT_TOKENIZER,
        help=f"a directory with tokenizer.json (default: SmolLM2's, from {GGUF_FILENAME} by "
        "`slurm-llm prepare-model`)",
    )  # fmt: skip
    models.add_argument(
        "--vocab-size", type=int, default=SMOLLM2_VOCAB,
        help=f"{SMOLLM2_VOCAB} (the tokenizer's) or {LLAMA3_VOCAB} (Llama 3's exact shape)",
    )  # fmt: skip
