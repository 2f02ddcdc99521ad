"""Benchmarks of any deployment: load sweeps, latency and throughput, saturation points, the
paper's figures, and paper-sized models with dummy weights."""

from slurm_llm._public import present_as_public
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

present_as_public(__name__, globals(), __all__)
