"""On a real SLURM cluster: deploy() to ready, and scancel to a ready replacement.

Needs a cluster (``slurm-llm cluster up`` starts one on this machine; export the SLURM_CONF it
prints). Each round measures, side by side with the engine's own start-up (llama.cpp, SmolLM2):
  deploy()        submission to ready for one replica on SLURM, split at the engine's start;
  replacement     scancel of a ready replica to its replacement being ready (reconcile loop).

    python benchmarks/slurm_lifecycle.py --rounds 5
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
from startup_overhead import engine_alone

from slurm_llm import ModelSpec, deploy

RESULTS = Path(__file__).parent / "results"


def one_round(spec: ModelSpec, home: Path, round_no: int) -> dict[str, float]:
    submitted = time.time()
    start = time.perf_counter()
    deployment = deploy(spec, replicas=1, executor="slurm", name=f"bench-{round_no}",
                        home=home, progress=False, timeout=300)  # fmt: skip
    ready = time.perf_counter() - start
    [record] = deployment.records()
    old = deployment.jobs[0].job_id
    cancelled = time.perf_counter()
    subprocess.run(["scancel", old], check=True)
    while True:
        [status] = deployment.status()
        if status.job_id != old and status.state == "ready":
            break
        time.sleep(0.05)
    replacement = time.perf_counter() - cancelled
    [new] = deployment.records()
    deployment.stop()
    return {
        "deploy_to_ready": ready,
        "submit_to_engine_start": record.started - submitted,
        "engine_start_to_ready": record.ready - record.started,
        "replacement": replacement,
        "replacement_engine": new.ready - new.started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    spec = ModelSpec.preset("smollm2-135m")
    console = Console()
    info = machine_info(("slurm-llm", "submitit", "xllamacpp"))
    info["slurm"] = subprocess.run(
        ["sinfo", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    console.print(f"Machine: {describe(info)}; {info['slurm']}")
    alone: list[float] = []
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(dir=Path.home()) as home:  # shared with the nodes
        engine_alone(spec)
        for round_no in range(args.rounds):
            alone.append(engine_alone(spec))
            rounds.append(one_round(spec, Path(home), round_no))
            console.print(f"round {round_no + 1}/{args.rounds}: {rounds[-1]}")
    rows = {
        "engine alone: start to first generation": alone,
        "deploy() to ready on SLURM": [r["deploy_to_ready"] for r in rounds],
        "  submission to engine start (sbatch, scheduling, submitit)": [
            r["submit_to_engine_start"] for r in rounds
        ],
        "  engine start to ready, inside the launcher": [
            r["engine_start_to_ready"] for r in rounds
        ],
        "overhead beyond the engine (paired)": [
            r["deploy_to_ready"] - a for r, a in zip(rounds, alone, strict=True)
        ],
        "scancel to replacement ready": [r["replacement"] for r in rounds],
        "  replacement beyond the engine's start": [
            r["replacement"] - r["replacement_engine"] for r in rounds
        ],
    }
    table = Table(title=f"Replica lifecycle on SLURM, llama.cpp SmolLM2, {args.rounds} rounds")
    for column in ("", "median s", "min s", "max s"):
        table.add_column(column, justify="right" if column else "left")
    for label, values in rows.items():
        table.add_row(label, f"{statistics.median(values):.2f}", f"{min(values):.2f}",
                      f"{max(values):.2f}")  # fmt: skip
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"slurm_lifecycle-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": info, "rounds": args.rounds, "seconds": rows}, indent=2))
    figure, axis = plt.subplots(figsize=(8, 3.5))
    picked = ["engine alone: start to first generation", "deploy() to ready on SLURM",
              "scancel to replacement ready"]  # fmt: skip
    axis.boxplot([rows[k] for k in picked], orientation="horizontal",
                 tick_labels=["engine alone", "deploy()", "replacement"])  # fmt: skip
    axis.set_xlabel("seconds")
    axis.set_title(f"Replica lifecycle on SLURM ({info['slurm']})\n{describe(info)}", fontsize=8)
    figure.tight_layout()
    figure.savefig(out.with_suffix(".png"), dpi=120)
    console.print(f"Saved {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
