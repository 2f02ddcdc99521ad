"""The one seam between a deployment and whatever runs its jobs.

``Scheduler`` is what a deployment needs of SLURM or of this machine: submit replica jobs,
cancel them, and say how they are. ``SubmititScheduler`` does it with submitit's executors (the
slurm one, or the local one when there is no SLURM); unit tests put a fake in its place, the
way submitit tests its own executors against a fake ``sbatch``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from slurm_llm._errors import DeploymentError
from slurm_llm._executors import (
    ExecutorKind,
    detached_output,
    local_parameters,
    make_executor,
    slurm_parameters,
)
from slurm_llm._launcher import ReplicaLauncher
from slurm_llm._paths import deployments_dir, registry_dir
from slurm_llm._reconcile import JobRef
from slurm_llm._replica_job import ReplicaJob, job_states
from slurm_llm._slurm_state import JobState, SlurmStates
from slurm_llm._spec import ModelSpec


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
            submitted = {i: ReplicaJob(self.kind, folder, j) for i, j in zip(indices, jobs,
                                                                              strict=True)}
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
        """Reaps this process's local jobs that ended after they left the state (a retired or
        scaled-down replica), so a long-lived controller collects no zombies or handles."""
        with self._lock:
            for job_id, handle in list(self._handles.items()):
                process = getattr(handle.job, "_process", None)
                if job_id not in keep and process is not None and process.poll() is not None:
                    del self._handles[job_id]

    def was_ready(self, job: JobRef) -> bool:
        return self.handle(job).was_ready()

    def failure_reason(self, job: JobRef, state: JobState) -> str:
        return self.handle(job).failure_reason(state)

    def log_path(self, job: JobRef) -> str:
        return str(self.handle(job).log_path)
