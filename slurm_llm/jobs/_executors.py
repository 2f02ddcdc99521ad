"""Which submitit executor runs replicas, and the job options a spec turns into.

SLURM when the cluster answers, submitit's local executor otherwise: the same launcher runs in
both, so a laptop and a cluster differ only here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import submitit

from slurm_llm._errors import DeploymentError
from slurm_llm.spec._model_spec import ModelSpec, SlurmOptions, time_limit_min

ExecutorKind = Literal["local", "slurm"]
# USR2 this long before the wall-time, so the launcher can checkpoint and SLURM requeue it.
MAX_SIGNAL_DELAY_S = 120


def signal_delay_s(time_min: int) -> int:
    """Up to 2 minutes, less for short jobs: SLURM may send the signal up to 60 s early, and it
    must come after the deployment's own handover (``handover_s`` before the end)."""
    return int(min(MAX_SIGNAL_DELAY_S, max(15, time_min * 60 // 8)))


def slurm_available() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        probe = subprocess.run(
            ["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def resolve_kind(kind: str) -> ExecutorKind:
    """``auto`` picks SLURM when its commands answer; asking for SLURM without it is an error."""
    if kind == "local":
        return "local"
    if kind == "slurm":
        if not slurm_available():
            raise DeploymentError(
                "executor='slurm' but sbatch/sinfo are missing or the controller does not answer; "
                "run on a login node, start a local cluster (slurm-llm cluster up), or use "
                "executor='local'"
            )
        return "slurm"
    if kind == "auto":
        return "slurm" if slurm_available() else "local"
    raise DeploymentError(f"unknown executor {kind!r}; use 'auto', 'local' or 'slurm'")


def slurm_parameters(spec: ModelSpec, job_name: str) -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters for one replica: one line of sbatch each."""
    return sbatch_parameters(
        spec.slurm, job_name, time_min=time_limit_min(spec), cpus=spec.cpus,
        mem_gb=spec.memory_gb, gpus=spec.gpus, nodes=spec.nodes,
    )  # fmt: skip


def sbatch_parameters(
    options: SlurmOptions,
    job_name: str,
    *,
    time_min: int,
    cpus: int,
    mem_gb: int,
    gpus: int = 0,
    nodes: int = 1,
) -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters for any of our jobs (replicas, the router)."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "nodes": nodes,
        "ntasks_per_node": 1,
        "cpus_per_task": cpus,
        "mem": f"{mem_gb}GB",
        "time": time_min,
        "signal_delay_s": signal_delay_s(time_min),
        "stderr_to_stdout": True,
    }
    if gpus:
        params["gres"] = f"gpu:{gpus}"
    for field in ("partition", "account", "qos", "constraint", "nodelist", "exclude"):
        if (value := getattr(options, field)) is not None:
            params[field] = value
    if options.extra:
        params["additional_parameters"] = dict(options.extra)
    return params


def local_parameters(spec: ModelSpec, replica: int) -> dict[str, Any]:
    """submitit ``LocalExecutor`` parameters; replica ``i`` gets its own slice of the GPUs."""
    if spec.nodes > 1:
        raise DeploymentError(
            f"{spec.name!r} spans {spec.nodes} nodes per replica, which needs SLURM; "
            "use executor='slurm' or nodes=1"
        )
    gpus = spec.gpus
    visible = tuple(range(replica * gpus, (replica + 1) * gpus))
    return local_job_parameters(time_limit_min(spec), gpus, visible)


def local_job_parameters(
    time_min: int, gpus: int = 0, visible_gpus: tuple[int, ...] = ()
) -> dict[str, Any]:
    """submitit ``LocalExecutor`` parameters for any of our jobs (replicas, the router)."""
    return {
        "timeout_min": time_min,
        "signal_delay_s": signal_delay_s(time_min),
        "gpus_per_node": gpus,
        "visible_gpus": visible_gpus,
        "stderr_to_stdout": True,
    }


def make_executor(kind: ExecutorKind, folder: Path) -> submitit.Executor:
    """A fresh folder per submission batch: job ids restart after a cluster's state is wiped,
    and a reused folder would then hand back an old job's result."""
    if kind == "slurm":
        return submitit.SlurmExecutor(folder=folder, max_num_timeout=100)
    return submitit.LocalExecutor(folder=folder, max_num_timeout=100)


_OUTPUT_SWAP = threading.Lock()


@contextlib.contextmanager
def detached_output(log_path: Path) -> Iterator[None]:
    """Points this process's stdout/stderr at ``log_path`` while local jobs are started.

    submitit's local controller inherits them; a controller holding the terminal or a pipe would
    keep ``slurm-llm up | tee`` (or any caller reading our output) waiting after we exit.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with _OUTPUT_SWAP:  # fds 1 and 2 belong to the process: one swap at a time, any thread
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.dup2(log, 1)
            os.dup2(log, 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (*saved, log):
                os.close(fd)
