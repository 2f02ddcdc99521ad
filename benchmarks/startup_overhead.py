"""Time from ``deploy()`` to ready, and how much of it is slurm-llm's own overhead.

Two measurements alternate in one run, so machine noise hits both alike:
  engine alone   start llama.cpp's server by hand, poll until a 1-token generation succeeds;
  deploy()       the same engine through submitit's local executor, the launcher, the port
                 lease, the readiness probe and the registry, until ``deploy()`` returns.
The difference is our overhead. The launcher's record also tells where it goes: from submission
to the launcher starting the engine (submitit's controller, unpickling, imports), and from the
engine being ready to ``deploy()`` noticing.

    python benchmarks/startup_overhead.py --rounds 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe, machine_info

from slurm_llm import ModelSpec, deploy
from slurm_llm._errors import EngineError
from slurm_llm._ports import lease_port
from slurm_llm._spec import resolve_model_path
from slurm_llm.engines import LaunchContext, get_engine

RESULTS = Path(__file__).parent / "results"


def engine_alone(spec: ModelSpec) -> float:
    engine = get_engine(spec.engine)
    with lease_port("127.0.0.1") as lease:
        ctx = LaunchContext("127.0.0.1", lease.port, resolve_model_path(spec.model), (), spec.cpus)
        start = time.perf_counter()
        process = subprocess.Popen(
            engine.command(spec, ctx), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            while True:
                try:
                    engine.probe(spec, ctx.url, timeout=30)
                    return time.perf_counter() - start
                except EngineError:
                    if process.poll() is not None:
                        raise
                    time.sleep(0.05)
        finally:
            process.terminate()
            process.wait()


def through_deploy(spec: ModelSpec, home: Path, round_no: int) -> dict[str, float]:
    submitted_wall = time.time()
    start = time.perf_counter()
    deployment = deploy(
        spec, replicas=1, executor="local", name=f"bench-{round_no}", home=home, progress=False
    )
    total = time.perf_counter() - start
    [record] = deployment.records()
    deployment.stop()
    return {
        "total": total,
        "to_engine_start": record.started - submitted_wall,
        "engine": record.ready - record.started,
        "noticed": total - (record.ready - submitted_wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    spec = ModelSpec.preset("smollm2-135m")
    console = Console()
    info = machine_info(("slurm-llm", "submitit", "xllamacpp"))
    console.print(f"Machine: {describe(info)}")
    alone: list[float] = []
    deployed: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as home:
        engine_alone(spec)  # warm the page cache for the weights once
        for round_no in range(args.rounds):
            alone.append(engine_alone(spec))
            deployed.append(through_deploy(spec, Path(home), round_no))
            console.print(
                f"round {round_no + 1}/{args.rounds}: engine alone {alone[-1]:.2f} s, "
                f"deploy() {deployed[-1]['total']:.2f} s"
            )
    totals = [d["total"] for d in deployed]
    overhead = [d - a for d, a in zip(totals, alone, strict=True)]
    rows = {
        "engine alone: start to first generation": alone,
        "deploy() to ready (1 replica, local executor)": totals,
        "  submission to engine start (submitit, launcher)": [
            d["to_engine_start"] for d in deployed
        ],
        "  engine start to ready, inside the launcher": [d["engine"] for d in deployed],
        "  ready record to deploy() returning": [d["noticed"] for d in deployed],
        "overhead = deploy() - engine alone (paired)": overhead,
    }
    table = Table(title=f"deploy() to ready, llama.cpp SmolLM2, {args.rounds} rounds")
    for column in ("", "median s", "min s", "max s"):
        table.add_column(column, justify="right" if column else "left")
    for label, values in rows.items():
        table.add_row(
            label, f"{statistics.median(values):.3f}", f"{min(values):.3f}", f"{max(values):.3f}"
        )
    console.print(table)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"startup_overhead-{stamp}.json"
    out.write_text(json.dumps({"machine": info, "rounds": args.rounds, "seconds": rows}, indent=2))
    figure, axis = plt.subplots(figsize=(8, 3.5))
    labels = ["engine alone", "deploy()", "overhead"]
    axis.boxplot([alone, totals, overhead], orientation="horizontal", tick_labels=labels)
    axis.set_xlabel("seconds")
    axis.set_title(
        f"Start-up to first generation, SmolLM2 on llama.cpp\n{describe(info)}", fontsize=8
    )
    figure.tight_layout()
    figure.savefig(out.with_suffix(".png"), dpi=120)
    console.print(f"Saved {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
