"""The one seam between a deployment and whatever runs its jobs.

``Scheduler`` is what a deployment needs of SLURM or of this machine: submit replica jobs,
cancel them, and say how they are. ``SubmititScheduler`` does it with submitit's executors (the
slurm one, or the local one when there is no SLURM); unit tests put a fake in its place, the
way submitit tests its own executors against a fake ``sbatch``.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from slurm_llm._errors import DeploymentError
from slurm_llm._paths import deployments_dir, registry_dir
from slurm_llm.control._reconcile import JobRef
from slurm_llm.jobs._executors import (
    ExecutorKind,
    detached_output,
    local_parameters,
    make_executor,
    slurm_parameters,
)
from slurm_llm.jobs._replica_job import ReplicaJob, job_states
from slurm_llm.jobs._slurm_state import JobState, SlurmStates
from slurm_llm.node._launcher import ReplicaLauncher
from slurm_llm.spec._model_spec import ModelSpec


class Scheduler(Protocol):
    kind: ExecutorKind

    def submit(self, spec: ModelSpec, name: str, indices: list[int]) -> dict[int, JobRef]:
        """One job per index, all submitted before it returns (one job array on SLURM)."""
        ...

    def cancel(self, job: JobRef) -> None: ...

    def states(self, jobs: Iterable[JobRef], max_age_s: float = 0.0) -> dict[str, JobState]:
        """Every job's state; SLURM's part may be up to ``max_age_s`` old."""
        ...

    def was_ready(self, job: JobRef) -> bool:
        """Whether the job's launcher ever published its replica."""
        ...

    def failure_reason(self, job: JobRef, state: JobState) -> str: ...

    def log_path(self, job: JobRef) -> str: ...

    def orphans(self, name: str, known: set[str]) -> list[JobRef]:
        """Live jobs of deployment ``name`` whose ids are not in ``known``: submitted by a
        process that died before it could save them."""
        ...


class SubmititScheduler:
    """Replica jobs through submitit, on SLURM or on this machine (``kind``)."""

    def __init__(self, kind: ExecutorKind, home: Path | None = None) -> None:
        self.kind = kind
        self._home = home
        self._slurm = SlurmStates()
        # Handles of jobs this process submitted keep their local Popen objects (a local job's
        # state and cancel go through them); others are re-attached from their folder.
        self._handles: dict[str, ReplicaJob] = {}
        self._lock = threading.Lock()

    def handle(self, job: JobRef) -> ReplicaJob:
        with self._lock:
            if job.job_id not in self._handles:
                self._handles[job.job_id] = ReplicaJob.reattach(
                    self.kind, Path(job.folder), job.job_id
                )
            return self._handles[job.job_id]

    def submit(self, spec: ModelSpec, name: str, indices: list[int]) -> dict[int, JobRef]:
        if not indices:
            return {}
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        folder = deployments_dir(self._home) / name / "jobs" / stamp
        launcher = ReplicaLauncher(spec.resolved(), name, registry_dir(self._home))
        executor = make_executor(self.kind, folder)
        submitted: dict[int, ReplicaJob] = {}
        if self.kind == "slurm":
            executor.update_parameters(**slurm_parameters(spec, f"slurm-llm-{name}"))
            try:
                jobs = executor.map_array(launcher, indices)
            except Exception as exc:  # sbatch's own words are the clearest explanation
                raise DeploymentError(
                    f"SLURM refused the replicas of {name!r}: {str(exc).strip()}; check the "
                    "spec's slurm options (partition, account, qos, constraint) and its GPUs "
                    "per replica"
                ) from None
            submitted = {
                i: ReplicaJob(self.kind, folder, j) for i, j in zip(indices, jobs, strict=True)
            }
        else:
            with detached_output(folder / "controllers.log"):
                try:
                    for index in indices:  # one submission each: replicas must not share GPUs
                        executor.update_parameters(**local_parameters(spec, index))
                        job = executor.submit(launcher, index)
                        submitted[index] = ReplicaJob(self.kind, folder, job)
                except BaseException:  # all or none: no job may run that the caller won't know
                    for replica_job in submitted.values():
                        replica_job.cancel()
                    raise
        with self._lock:
            self._handles.update({job.job_id: job for job in submitted.values()})
        return {index: JobRef(job.job_id, str(folder)) for index, job in submitted.items()}

    def cancel(self, job: JobRef) -> None:
        self.handle(job).cancel()

    def states(self, jobs: Iterable[JobRef], max_age_s: float = 0.0) -> dict[str, JobState]:
        jobs = list(jobs)
        self._forget_ended(keep={job.job_id for job in jobs})
        return job_states([self.handle(job) for job in jobs], self._slurm, max_age_s)

    def _forget_ended(self, keep: set[str]) -> None:
        """Forgets handles of jobs that left the state (a retired or scaled-down replica) once
        they have ended, reaping local ones, so a long-lived controller collects no zombies or
        handles; a SLURM job's handle can be made again from its id at any time."""
        with self._lock:
            for job_id, handle in list(self._handles.items()):
                if job_id in keep:
                    continue
                process = getattr(handle.job, "_process", None)
                if process is None or process.poll() is not None:
                    del self._handles[job_id]

    def was_ready(self, job: JobRef) -> bool:
        return self.handle(job).was_ready()

    def failure_reason(self, job: JobRef, state: JobState) -> str:
        return self.handle(job).failure_reason(state)

    def log_path(self, job: JobRef) -> str:
        return str(self.handle(job).log_path)

    def orphans(self, name: str, known: set[str]) -> list[JobRef]:
        if self.kind == "slurm":
            live = _slurm_jobs_named(f"slurm-llm-{name}")
            return [JobRef(job_id, "") for job_id in live if job_id not in known]
        jobs = deployments_dir(self._home) / name / "jobs"
        return [
            JobRef(pid, folder)
            for pid, folder in _local_controllers_under(jobs).items()
            if pid not in known
        ]


def _slurm_jobs_named(job_name: str) -> list[str]:
    """This user's live jobs called ``job_name`` (array elements one by one); none if SLURM
    does not answer."""
    argv = ["squeue", "--me", "-h", "-r", "-n", job_name, "-o", "%i"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return done.stdout.split() if done.returncode == 0 else []


def _local_controllers_under(folder: Path) -> dict[str, str]:
    """pid -> submitit folder of every running local job controller whose folder lies under
    ``folder`` (submitit names the folder on the controller's command line)."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.local._local" in args[:3] and len(args) > 3:
            job_folder = args[3].decode(errors="replace")
            if Path(job_folder).is_relative_to(folder):
                found[cmdline.parent.name] = job_folder
    return found
