"""On a real SLURM cluster: deploy() to ready, and scancel to a ready replacement.

Needs a cluster (``slurm-llm cluster up`` starts one on this machine; export the SLURM_CONF it
prints). Each round measures, side by side with the engine's own start-up (llama.cpp, SmolLM2):
  deploy()        submission to ready for one replica on SLURM, split at the engine's start;
  replacement     scancel of a ready replica to its replacement being ready (reconcile loop).

    python benchmarks/slurm_lifecycle.py --rounds 5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from _report import describe, machine_info, report_seconds
from startup_overhead import engine_alone

from slurm_llm import ModelSpec, deploy


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
    report_seconds(
        "slurm_lifecycle",
        f"Replica lifecycle on SLURM ({info['slurm']}), llama.cpp SmolLM2, {args.rounds} rounds",
        rows,
        {
            "engine alone: start to first generation": "engine alone",
            "deploy() to ready on SLURM": "deploy()",
            "scancel to replacement ready": "replacement",
        },
        info,
        console,
    )


if __name__ == "__main__":
    main()
