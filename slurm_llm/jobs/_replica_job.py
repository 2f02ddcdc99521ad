"""The job behind a replica, on SLURM or on this machine, whichever process submitted it.

Deployments outlive the process that created them, so a job is known by its id and submitit
folder alone; a handle made in another process can still read its state, logs and error, and
cancel it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path

import submitit

from slurm_llm import _errors
from slurm_llm._files import tail
from slurm_llm._registry import pid_alive
from slurm_llm.jobs._executors import ExecutorKind
from slurm_llm.jobs._slurm_state import ENDED, JobState, SlurmStates
from slurm_llm.node._launcher import READY_MARK

LOG_TAIL_LINES = 15
# Our errors as a traceback names them: under the public module they present themselves in
# (``slurm_llm.SpecError``), or where they are defined.
_OWN_ERROR_NAMES = "|".join(n for n, value in vars(_errors).items() if isinstance(value, type))
_OWN_ERROR = re.compile(rf"slurm_llm(?:\._errors)?\.(?=(?:{_OWN_ERROR_NAMES}):)")


class ReplicaJob:
    def __init__(self, kind: ExecutorKind, folder: Path, job: submitit.Job[None]) -> None:
        self.kind = kind
        self.folder = folder
        self.job = job

    @classmethod
    def reattach(cls, kind: ExecutorKind, folder: Path, job_id: str) -> ReplicaJob:
        job_class = submitit.SlurmJob if kind == "slurm" else submitit.LocalJob
        return cls(kind, folder, job_class(folder=folder, job_id=job_id))

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)

    @property
    def log_path(self) -> Path:
        return Path(self.job.paths.stdout)

    def local_state(self) -> JobState:
        """A local job is RUNNING while submitit's controller process lives."""
        if (process := getattr(self.job, "_process", None)) is not None:
            return JobState("RUNNING" if process.poll() is None else ENDED)
        return JobState("RUNNING" if _local_controller_alive(self.job_id) else ENDED)

    def failure_reason(self, state: JobState) -> str:
        """Our launcher's own error if it wrote one, else SLURM's state and the log's tail."""
        if self.job.paths.result_pickle.exists():
            with contextlib.suppress(Exception):
                error = self.job.exception()
                if error is not None:
                    return job_error_message(str(error))
        return f"job ended ({state.state}); last log lines:\n{self.log_tail()}"

    def was_ready(self) -> bool:
        """Whether its launcher ever published: the launcher logs each time it does."""
        try:
            return READY_MARK in self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return False

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_path, lines, missing="(no log yet)")

    def cancel(self) -> None:
        """scancel on SLURM. Locally SIGTERM, which submitit's controller forwards to the
        launcher (a clean stop), rather than submitit's SIGINT, which kills it after 1 s."""
        if self.kind == "slurm":
            self.job.cancel(check=False)
        elif (process := getattr(self.job, "_process", None)) is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        elif _local_controller_alive(self.job_id):
            os.kill(int(self.job_id), signal.SIGTERM)


def job_states(
    jobs: list[ReplicaJob], slurm: SlurmStates, max_age_s: float = 0.0
) -> dict[str, JobState]:
    """Every job's state, with one squeue call for all SLURM jobs (or none, within
    ``max_age_s`` of the last; local jobs are always read afresh, which is cheap)."""
    states = {job.job_id: job.local_state() for job in jobs if job.kind == "local"}
    states.update(slurm.query((job.job_id for job in jobs if job.kind == "slurm"), max_age_s))
    return states


def job_error_message(text: str) -> str:
    """Our own error's message out of submitit's traceback text, else the traceback's tail."""
    found = list(_OWN_ERROR.finditer(text))
    if found:
        message = text[found[-1].end() :].split("\n----------------------", maxsplit=1)[0]
        return message.strip()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-LOG_TAIL_LINES:]) if lines else text


def _local_controller_alive(pid: str) -> bool:
    """True while submitit's local controller with this pid runs (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False
    return b"submitit.local._local" in cmdline and pid_alive(int(pid))
