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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from _report import describe, machine_info, report_seconds

from slurm_llm import ModelSpec, deploy
from slurm_llm._errors import EngineError
from slurm_llm.engines import LaunchContext, get_engine
from slurm_llm.node._ports import lease_port
from slurm_llm.spec._model_spec import resolve_model_path


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
    report_seconds(
        "startup_overhead",
        f"deploy() to ready, llama.cpp SmolLM2, {args.rounds} rounds",
        rows,
        {
            "engine alone: start to first generation": "engine alone",
            "deploy() to ready (1 replica, local executor)": "deploy()",
            "overhead = deploy() - engine alone (paired)": "overhead",
        },
        info,
        console,
    )


if __name__ == "__main__":
    main()
