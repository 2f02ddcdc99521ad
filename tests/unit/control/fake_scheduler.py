"""A fake scheduler (named as such): SLURM's job life in memory, for fast tests of deployments.

It stands in for ``SubmititScheduler`` at the one seam a deployment has: submit, cancel, state.
The tests move its jobs through their life by hand (start, publish a record, die, requeue, near
their wall-time), so every interleaving the reconcile logic must survive can be set up in
microseconds. The real thing is exercised by the integration tests on the local SLURM cluster
and the local executor.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from slurm_llm._registry import EndpointRecord, Registry
from slurm_llm.control._reconcile import JobRef
from slurm_llm.jobs._executors import ExecutorKind
from slurm_llm.jobs._slurm_state import JobState
from slurm_llm.spec._model_spec import ModelSpec


@dataclass
class FakeJob:
    job_id: str
    index: int
    deployment: str
    state: str = "PENDING"
    reason: str | None = "Priority"
    was_ready: bool = False
    error: str = ""


class Crash(BaseException):
    """The process dies here (SIGKILL, an out-of-memory kill): no handler runs after it."""


class FakeScheduler:
    kind: ExecutorKind = "slurm"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.jobs: dict[str, FakeJob] = {}
        self.cancelled: list[str] = []
        self._ids = itertools.count(100)
        # Called inside submit(), between "sbatch" and the caller saving its state: the worst
        # moment for a concurrent reader, which tests put here.
        self.during_submit: Callable[[], None] | None = None

    # ---- the Scheduler protocol -------------------------------------------------------------

    def submit(self, spec: ModelSpec, name: str, indices: list[int]) -> dict[int, JobRef]:
        refs = {}
        for index in indices:
            job = FakeJob(str(next(self._ids)), index, name)
            self.jobs[job.job_id] = job
            refs[index] = JobRef(job.job_id, "fake")
        if self.during_submit is not None:
            self.during_submit()
        return refs

    def cancel(self, job: JobRef) -> None:
        fake = self.jobs[job.job_id]
        if fake.state in ("PENDING", "RUNNING"):
            self._end(fake, "CANCELLED")
            self.cancelled.append(job.job_id)

    def states(self, jobs: Iterable[JobRef], max_age_s: float = 0.0) -> dict[str, JobState]:
        return {
            job.job_id: JobState(self.jobs[job.job_id].state, self.jobs[job.job_id].reason)
            for job in jobs
        }

    def was_ready(self, job: JobRef) -> bool:
        return self.jobs[job.job_id].was_ready

    def failure_reason(self, job: JobRef, state: JobState) -> str:
        return self.jobs[job.job_id].error or f"job ended ({state.state})"

    def log_path(self, job: JobRef) -> str:
        return f"/fake/{job.job_id}.out"

    def orphans(self, name: str, known: set[str]) -> list[JobRef]:
        return [
            JobRef(job.job_id, "fake")
            for job in self.live()
            if job.deployment == name and job.job_id not in known
        ]

    # ---- what tests do to jobs ----------------------------------------------------------------

    def live(self) -> list[FakeJob]:
        return [job for job in self.jobs.values() if job.state in ("PENDING", "RUNNING")]

    def start(self, job_id: str) -> None:
        job = self.jobs[job_id]
        if job.state == "PENDING":
            job.state, job.reason = "RUNNING", None

    def publish(self, job_id: str, deadline: float | None = None) -> None:
        """The launcher's engine answered: it publishes its record."""
        job = self.jobs[job_id]
        self.start(job_id)
        if job.state != "RUNNING":
            return
        job.was_ready = True
        now = time.time()
        self.registry.publish(EndpointRecord(
            deployment=job.deployment, replica=job.index, model="m", engine="llamacpp",
            url=f"http://127.0.0.1:{job_id}", node=socket.gethostname(), job_id=job_id,
            launcher_pid=os.getpid(), engine_pid=os.getpid(), gpus=[], started=now, ready=now,
            heartbeat=now, deadline=deadline,
        ))  # fmt: skip

    def die(self, job_id: str, state: str = "FAILED", error: str = "") -> None:
        """The job ends on its own (node failure, engine past its restarts, scancel by hand),
        without withdrawing its record, as a SIGKILLed launcher would."""
        job = self.jobs[job_id]
        if job.state in ("PENDING", "RUNNING"):
            job.error = error
            job.state, job.reason = state, None

    def requeue(self, job_id: str) -> None:
        """Preemption: SLURM puts the same job back in the queue; its record is withdrawn."""
        job = self.jobs[job_id]
        if job.state == "RUNNING":
            job.state, job.reason = "PENDING", "BeginTime"
            self.registry.withdraw(job.deployment, job.index, job_id)

    def hold_hopelessly(self, job_id: str) -> None:
        job = self.jobs[job_id]
        if job.state == "PENDING":
            job.reason = "PartitionConfig"

    def _end(self, job: FakeJob, state: str) -> None:
        job.state, job.reason = state, None
        self.registry.withdraw(job.deployment, job.index, job.job_id)
