"""The paper's saturation study on this machine: SmolLM2 on llama.cpp and on vLLM's CPU build.

For each engine, two replicas (one core each, leased so that each has its own) are deployed with
slurm-llm's own ``deploy``, and ``slurm-llm bench``'s sweep runs the paper's workload (prompts
of 1024 tokens translating Lorem Ipsum, answers of exactly ``--output-tokens``) at rising numbers
of concurrent users, through three set-ups:
  direct-1x  one replica, no front end: the engine alone;
  router-1x  the same replica behind ``slurm-llm router``: the difference is the router's cost;
  router-2x  both replicas behind the router: how throughput scales with replicas.
Goal: router-2x's peak output-token throughput >= 1.8x router-1x's.

Each set-up's run is saved as JSON and CSV (every request in it) and plotted like the paper's
Figures 3 and 4; a summary JSON holds the ratios, and one pair of figures shows all runs.
The load generator and the router share this machine's cores with the replicas: with one replica
they have a core to themselves, with two they do not, so the scaling ratio includes the router's
and the client's CPU cost, as it would on a node that runs them beside the engines.

    python benchmarks/saturation_sweep.py --engines llamacpp    # ~15 minutes
    python benchmarks/saturation_sweep.py --engines vllm --levels 1,2,4,8,16,32 \
        --levels-2x 1,2,4,8,16,32,64                            # vLLM batches: ~35 minutes
    python benchmarks/saturation_sweep.py --engines llamacpp --levels 1,2,4   # a quick look
    python benchmarks/saturation_sweep.py --from-runs results/saturation_sweep-*-1x-*.json ...
        # no measuring: re-apply the saturation rule to saved runs, summarise and plot them
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from _report import RESULTS
from _servers import background
from _specs import VLLM_ENV, VLLM_MODEL, vllm_cpu

from slurm_llm import Deployment, ModelSpec, deploy
from slurm_llm.bench import (
    BenchRun,
    LatencyTargets,
    SweepSettings,
    capacity_at_targets,
    load_run,
    plot_runs,
    run_sweep,
    saturation_point,
    save_run,
    summarise_level,
    url_target,
)
from slurm_llm.bench._cli import levels
from slurm_llm.bench._report import compare_table, level_table
from slurm_llm.bench._results import FrontEnd
from slurm_llm.node._ports import lease_port

SLOTS = 16  # sequences each engine batches; the router sends no more than this to a replica


def spec_for(engine: str, args: argparse.Namespace) -> ModelSpec:
    per_request = args.prompt_tokens + args.output_tokens + 256  # chat template and margin
    if engine == "llamacpp":
        return ModelSpec.preset(
            "smollm2-135m",
            cpus_per_replica=1,
            max_concurrent_requests=SLOTS,
            context_length=SLOTS * per_request,  # llama.cpp splits it among the slots
        )
    return vllm_cpu(
        args.vllm_env,
        args.vllm_model,
        cpus_per_replica=1,
        max_concurrent_requests=SLOTS,
        context_length=per_request,
    )


@contextmanager
def router(backends: list[str], model: str, home: Path, log: Path) -> Iterator[str]:
    """``slurm-llm router`` in its own process in front of ``backends``; its URL."""
    cli = Path(sys.executable).parent / "slurm-llm"
    argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "slurm_llm"]
    with lease_port("127.0.0.1") as lease:
        argv += ["router", "--port", str(lease.port), "--replica-limit", str(SLOTS)]
        for url in backends:
            argv += ["--backend", f"{model}={url}"]
        url = f"http://127.0.0.1:{lease.port}"

        def all_routable() -> bool:
            with urllib.request.urlopen(f"{url}/v1/load", timeout=1) as answer:
                models = json.loads(answer.read())["models"]
            return bool(models) and models[0]["routable"] == len(backends)

        env = {**os.environ, "SLURM_LLM_HOME": str(home)}
        with background(argv, all_routable, log, timeout=30, env=env):
            yield url


def sweep_engine(
    engine: str, args: argparse.Namespace, work: Path, console: Console
) -> list[BenchRun]:
    spec = spec_for(engine, args)
    deployment: Deployment = deploy(
        spec, replicas=2, executor="local", name=f"sweep-{engine}", progress=False, timeout=900
    )
    runs = []
    try:
        replicas = [r.url for r in sorted(deployment.records(), key=lambda r: r.replica)]
        setups: list[tuple[FrontEnd, list[str], list[float]]] = [
            ("direct", replicas[:1], args.levels),
            ("router", replicas[:1], args.levels),
            ("router", replicas, args.levels_2x),
        ]
        for front_end, backends, loads in setups:
            label = f"{engine}-{front_end}-{len(backends)}x"
            if f"{front_end}-{len(backends)}x" not in args.setups.split(","):
                continue
            settings = SweepSettings(
                workload="translation",
                mode="concurrency",
                levels=loads,
                rounds=args.rounds,
                min_requests=args.min_requests,
                prompt_tokens=args.prompt_tokens,
                output_tokens=args.output_tokens,
                seed=args.seed,
                targets=targets(args),
            )
            with front_end_url(front_end, backends, spec.name, work, label) as url:
                target, info = url_target(
                    url, spec.name, front_end, engine=engine, replicas=len(backends)
                )
                run = run_sweep(target, info, settings, label, console=console)
            console.print(level_table(run))
            saved = save_run(
                run, RESULTS, f"saturation_sweep-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
            )
            console.print(f"Saved {saved}")
            runs.append(run)
    finally:
        deployment.stop()
    return runs


@contextmanager
def front_end_url(
    front_end: FrontEnd, backends: list[str], model: str, work: Path, label: str
) -> Iterator[str]:
    if front_end == "direct":
        yield backends[0]
        return
    with router(backends, model, work / "home", work / f"{label}-router.log") as url:
        yield url


def summary(runs: list[BenchRun]) -> dict[str, Any]:
    """The ratios the README quotes, per engine."""
    by_label = {run.label: run for run in runs}
    out: dict[str, Any] = {}
    for engine in sorted({run.target.engine for run in runs}):
        one, two = by_label.get(f"{engine}-router-1x"), by_label.get(f"{engine}-router-2x")
        direct = by_label.get(f"{engine}-direct-1x")
        entry: dict[str, Any] = {
            run.label: {
                "peak_tok_s": run.peak_throughput,
                "saturation": run.saturation.load,
                "saturation_rule": run.saturation.reason,
                "capacity_at_targets": run.slo_capacity.load,
            }
            for run in runs
            if run.target.engine == engine
        }
        if one and two:
            entry["scaling_2x_over_1x"] = two.peak_throughput / one.peak_throughput
            entry["goal_scaling_1_8x_met"] = two.peak_throughput / one.peak_throughput >= 1.8
        if one and direct:
            entry["router_peak_over_direct"] = one.peak_throughput / direct.peak_throughput
            first_direct, first_router = direct.levels[0], one.levels[0]
            entry["router_added_ttft_p50_s_at_1_user"] = (first_router.ttft.p50 or 0) - (
                first_direct.ttft.p50 or 0
            )
            entry["router_added_tpot_p50_s_at_1_user"] = (first_router.tpot.p50 or 0) - (
                first_direct.tpot.p50 or 0
            )
        out[engine] = entry
    return out


def rejudged(path: Path, targets: LatencyTargets) -> BenchRun:
    """A saved run summarised again from its requests, with ``targets`` and the current
    saturation rule (the requests are left as measured); saved back in place."""
    run = load_run(path)
    summaries = [
        summarise_level(level.records, targets, concurrency=level.concurrency, rate=level.rate)
        for level in run.levels
    ]
    run = run.model_copy(
        update={
            "settings": run.settings.model_copy(update={"targets": targets}),
            "levels": summaries,
            "saturation": saturation_point(summaries),
            "slo_capacity": capacity_at_targets(summaries, targets),
        }
    )
    save_run(run, path.parent, path.stem)
    return run


def targets(args: argparse.Namespace) -> LatencyTargets:
    return LatencyTargets(ttft_s=args.ttft_target, tpot_s=args.tpot_target_ms / 1000)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", default="llamacpp,vllm")
    parser.add_argument("--setups", default="direct-1x,router-1x,router-2x")
    parser.add_argument("--levels", type=levels, default=levels("1,2,4,8"))
    parser.add_argument("--levels-2x", type=levels, default=levels("1,2,4,8,16"))
    parser.add_argument("--rounds", type=int, default=2, help="requests per user per level")
    parser.add_argument("--min-requests", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    # A CPU's scale: one core takes ~5 s to read a 1024-token prompt.
    parser.add_argument("--ttft-target", type=float, default=10.0, help="seconds, for goodput")
    parser.add_argument("--tpot-target-ms", type=float, default=100.0, help="ms, for goodput")
    parser.add_argument("--vllm-env", type=Path, default=VLLM_ENV)
    parser.add_argument("--vllm-model", type=Path, default=VLLM_MODEL)
    parser.add_argument("--from-runs", type=Path, nargs="+", help="saved runs; measure nothing")
    args = parser.parse_args()
    console = Console(width=150)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.from_runs:
        runs = [rejudged(path, targets(args)) for path in args.from_runs]
    else:
        runs = []
        with tempfile.TemporaryDirectory(prefix="saturation-") as tmp:
            work = Path(tmp)
            os.environ["SLURM_LLM_HOME"] = str(work / "home")
            for engine in args.engines.split(","):
                runs += sweep_engine(engine, args, work, console)
    console.print(compare_table(runs))
    result = {"summary": summary(runs), "runs": [run.label for run in runs]}
    console.print_json(json.dumps(result["summary"]))
    out = RESULTS / f"saturation_sweep-{stamp}.json"
    out.write_text(json.dumps(result, indent=2))
    for path in plot_runs(runs, out.with_suffix("")):
        console.print(f"Plotted {path}")
    console.print(f"Saved {out}")


if __name__ == "__main__":
    main()
