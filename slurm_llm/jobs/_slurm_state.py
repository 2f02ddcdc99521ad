"""What SLURM says about our jobs: ``squeue`` for live ones, ``sacct`` for ended ones.

submitit reads every state from ``sacct`` through a watcher that backs off to 15-20 s, and on a
site without accounting it reports UNKNOWN forever. Replicas need better: a cancelled job must be
noticed in about a second, a pending job's reason shown ("Resources", "PartitionConfig"), and
sites without accounting must still work. So live jobs come from one batched ``squeue`` call,
ended ones from ``sacct`` when it answers, and otherwise from whether submitit wrote a result.

Each call is an RPC to slurmctld, which every user of the cluster shares, so a loop that waits
(for readiness, for a stop) asks for answers up to ``max_age_s`` old and gets the last one
again instead of a new call.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

logger = logging.getLogger("slurm_llm")

ACTIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
     "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"}
)  # fmt: skip
# Pending reasons that no amount of waiting fixes: the job asks for something the site lacks.
HOPELESS_REASONS = frozenset(
    {
        "BadConstraints",
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "InvalidAccount",
        "InvalidQOS",
        "QOSMaxGRESPerJob",
        "QOSMaxCpuPerJobLimit",
        "QOSMaxMemoryPerJob",
        "QOSMaxWallDurationPerJobLimit",
        "AssocMaxGRESPerJob",
        "AssocMaxCpuPerJobLimit",
        "AssocMaxWallDurationPerJobLimit",
        "DependencyNeverSatisfied",
    }
)
ENDED = "ENDED"  # gone from the queue, outcome unknown (no accounting)
UNKNOWN = "UNKNOWN"  # SLURM did not answer: alive or not, nobody can say


@dataclass(frozen=True)
class JobState:
    state: str
    reason: str | None = None
    nodes: str | None = None
    # Running: when it started; pending: when SLURM expects to start it (its backfill
    # scheduler's estimate, what ``squeue --start`` shows), if it has one.
    start: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def hopeless(self) -> bool:
        return self.state == "PENDING" and (self.reason or "") in HOPELESS_REASONS


class SlurmStates:
    """Batched state queries; remembers whether this site has accounting."""

    def __init__(self) -> None:
        self.accounting: bool | None = None
        self._last: tuple[list[str], float, dict[str, JobState]] | None = None

    def query(self, job_ids: Iterable[str], max_age_s: float = 0.0) -> dict[str, JobState]:
        """The jobs' states; an answer for the same jobs younger than ``max_age_s`` is reused."""
        ids = sorted(set(job_ids))
        if not ids:
            return {}
        if self._last is not None:
            asked, when, answer = self._last
            if asked == ids and time.monotonic() - when < max_age_s:
                return answer
        answer = self._ask(ids)
        self._last = (ids, time.monotonic(), answer)
        return answer

    def _ask(self, ids: list[str]) -> dict[str, JobState]:
        """squeue for live jobs, sacct for the rest. When SLURM does not answer (slurmctld
        busy or down, a timeout), every job is UNKNOWN: a job must never look ended, and be
        replaced, only because nobody could say it was alive."""
        done = _run(["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i|%T|%r|%N|%S"])
        if done is None:
            return {job_id: JobState(UNKNOWN) for job_id in ids}
        # squeue fails with "Invalid job id" when no id is known any more: they have all ended.
        if done.returncode != 0 and "Invalid job id" not in done.stderr:
            return {job_id: JobState(UNKNOWN) for job_id in ids}
        states = parse_squeue(done.stdout if done.returncode == 0 else "")
        missing = [job_id for job_id in ids if job_id not in states]
        if missing:
            states.update(self._ended(missing))
        return {job_id: states.get(job_id, JobState(ENDED)) for job_id in ids}

    def _ended(self, job_ids: list[str]) -> dict[str, JobState]:
        if self.accounting is False:
            return {}
        done = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State"])
        if done is None or done.returncode != 0:
            if self.accounting:  # it answered before: this is a hiccup, not a site without it
                return {job_id: JobState(UNKNOWN) for job_id in job_ids}
            logger.warning(
                "sacct does not answer (accounting disabled on this cluster?): ended jobs "
                "are judged from squeue and their result files only"
            )
            self.accounting = False
            return {}
        self.accounting = True
        return parse_sacct(done.stdout)


def parse_squeue(output: str | None) -> dict[str, JobState]:
    """``%i|%T|%r|%N|%S`` lines."""
    states = {}
    for line in (output or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) == 5:
            job_id, state, reason, nodes, start = parts
            states[job_id] = JobState(
                state, None if reason == "None" else reason, nodes or None, parse_time(start)
            )
    return states


def parse_time(text: str) -> float | None:
    """SLURM's ``2026-12-01T14:02:00`` (local time) as epoch seconds; None for N/A, Unknown,
    None."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


def parse_sacct(output: str) -> dict[str, JobState]:
    """``123_0|CANCELLED by 0`` lines; the last line of a job wins (requeues repeat it)."""
    states = {}
    for line in output.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id and state:
            states[job_id] = JobState(state.split()[0].rstrip("+"))
    return states


def _run(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    """The finished command, or None when it could not run or timed out."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
