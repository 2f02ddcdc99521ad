"""The launcher's own account of what its job holds: which deployment, how many GPUs and CPUs,
from when until when.

SLURM's accounting (``sacct``) is the better source of a job's GPU-hours, and the chargeback
report uses it when it answers; but some sites run SLURM without accounting, and local jobs
never reach SLURM at all. For those the launcher keeps this ledger: one small JSON file per job
and node under ``<home>/usage/jobs/``, rewritten atomically every ``LEDGER_EVERY_S`` while the
job runs and once more when it ends. A job killed with SIGKILL (or its node lost) is counted
until its last rewrite, so it is under-counted by at most ``LEDGER_EVERY_S``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from slurm_llm._files import write_atomic

LEDGER_EVERY_S = 30.0


@dataclass(frozen=True)
class JobSpan:
    """What one node of one job held, and for how long (epoch seconds)."""

    job: str
    deployment: str
    node: str
    rank: int
    gpus: int
    cpus: int
    started: float
    ended: float  # when the job ended, or was last seen running

    @property
    def file_name(self) -> str:
        # The start time too: a requeued job keeps its id and starts a new span.
        return f"{self.job}.{self.rank}.{int(self.started)}.json"


def job_spans_dir(home: Path) -> Path:
    return home / "usage" / "jobs"


class JobLedger:
    """Keeps one job's span up to date while it runs: ``start()``, then ``stop()`` at its end."""

    def __init__(self, folder: Path, span: JobSpan, every_s: float = LEDGER_EVERY_S) -> None:
        self.folder = folder
        self.span = span
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="job-ledger", daemon=True)

    def start(self) -> None:
        self._write()
        self._thread.start()

    def stop(self) -> None:
        """Writes the end; safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._write()

    def _keep(self) -> None:
        while not self._stop.wait(self.every_s):
            self._write()

    def _write(self) -> None:
        self.span = replace(self.span, ended=time.time())
        try:
            write_span(self.folder, self.span)
        except OSError as exc:  # accounting must never end a replica
            print(f"[slurm-llm] cannot write the job ledger in {self.folder}: {exc}", flush=True)


def write_span(folder: Path, span: JobSpan) -> None:
    write_atomic(folder / span.file_name, json.dumps(vars(span)))


def read_job_spans(folder: Path) -> list[JobSpan]:
    """Every span in the ledger; a file that cannot be read is skipped."""
    spans = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            spans.append(JobSpan(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return spans
