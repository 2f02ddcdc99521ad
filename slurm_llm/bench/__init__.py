"""Benchmarks of any deployment: load sweeps, latency and throughput, saturation points, the
paper's figures, and paper-sized models with dummy weights."""

from slurm_llm.bench._cli import add_bench_command
from slurm_llm.bench._loadgen import Target
from slurm_llm.bench._plots import plot_runs
from slurm_llm.bench._results import (
    BenchRun,
    LatencyTargets,
    LevelResult,
    Percentiles,
    RequestRecord,
    Saturation,
    SweepSettings,
    TargetInfo,
    load_run,
    save_run,
)
from slurm_llm.bench._saturation import capacity_at_targets, saturation_point
from slurm_llm.bench._shapes import PAPER_SHAPES, write_dummy_model
from slurm_llm.bench._stats import percentile, summarise_level
from slurm_llm.bench._sweep import run_sweep
from slurm_llm.bench._targets import deployment_target, front_end_target, url_target
from slurm_llm.bench._workloads import Workload, workloads

__all__ = [
    "PAPER_SHAPES",
    "BenchRun",
    "LatencyTargets",
    "LevelResult",
    "Percentiles",
    "RequestRecord",
    "Saturation",
    "SweepSettings",
    "Target",
    "TargetInfo",
    "Workload",
    "add_bench_command",
    "capacity_at_targets",
    "deployment_target",
    "front_end_target",
    "load_run",
    "percentile",
    "plot_runs",
    "run_sweep",
    "saturation_point",
    "save_run",
    "summarise_level",
    "url_target",
    "workloads",
    "write_dummy_model",
]
