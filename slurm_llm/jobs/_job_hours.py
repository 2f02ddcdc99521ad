"""The GPU- and CPU-hours each deployment's jobs held in a period: from SLURM's accounting when
it answers, else from the launchers' own ledger (``node/_job_ledger``).

``sacct`` is asked once for every deployment's replica jobs (named ``slurm-llm-NAME``), with
``-X`` so each job is one line holding the whole allocation (``AllocTRES``: ``cpu=8,gres/gpu=4,
...``), across all its nodes, and ``-D`` so each run of a requeued job is a line of its own
(without it, only the last run is shown, and the earlier ones go uncharged). A job is counted
from its start to its end, cut to the period; a job still running counts until the period's
end (or now). A deployment for which SLURM has no job (local jobs, a site without accounting,
jobs of another user) is counted from the ledger, and the report says which source each
figure came from.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from slurm_llm.jobs._slurm_state import parse_time
from slurm_llm.node._job_ledger import JobSpan

SACCT_FIELDS = "JobID,JobName,Start,End,AllocTRES"
JOB_NAME_PREFIX = "slurm-llm-"  # replica jobs are named slurm-llm-DEPLOYMENT


@dataclass(frozen=True)
class JobHours:
    """What one job held within the period."""

    job: str
    deployment: str
    gpu_hours: float
    cpu_hours: float
    source: str  # "sacct" or "ledger"


def deployment_jobs_hours(
    deployments: Iterable[str], since: float, until: float, ledger: Iterable[JobSpan]
) -> list[JobHours]:
    """The hours of every job of ``deployments`` within ``[since, until]`` (epoch seconds):
    from ``sacct``, else from the ``ledger``'s spans (``read_job_spans``)."""
    names = sorted(set(deployments))
    if not names:
        return []
    from_sacct = sacct_hours(names, since, until)
    uncounted = set(names) - {hours.deployment for hours in from_sacct}
    spans = [span for span in ledger if span.deployment in uncounted]
    from_ledger = [ledger_hours(span, since, until) for span in spans]
    return from_sacct + [job for job in from_ledger if job.gpu_hours or job.cpu_hours]


def sacct_hours(deployments: list[str], since: float, until: float) -> list[JobHours]:
    """The deployments' jobs according to ``sacct``; none when it does not answer."""
    argv = [
        "sacct", "-X", "-D", "-P", "-n", "-o", SACCT_FIELDS,
        "--name", ",".join(JOB_NAME_PREFIX + name for name in deployments),
        "-S", _sacct_time(since), "-E", _sacct_time(until),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "SLURM_TIME_FORMAT": "standard"},
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    return parse_sacct_hours(done.stdout, since, until)


def parse_sacct_hours(output: str, since: float, until: float) -> list[JobHours]:
    """``JobID|JobName|Start|End|AllocTRES`` lines (times local, as sacct prints them)."""
    found = []
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5 or not parts[1].startswith(JOB_NAME_PREFIX):
            continue
        job, name, start, end, tres = parts
        began = parse_time(start)
        if began is None:  # never started
            continue
        ended = parse_time(end) or until  # "Unknown": still running
        hours = _overlap_s(began, ended, since, until) / 3600
        allocated = parse_tres(tres)
        found.append(
            JobHours(job, name.removeprefix(JOB_NAME_PREFIX), hours * allocated.get("gres/gpu", 0),
                     hours * allocated.get("cpu", 0), "sacct")
        )  # fmt: skip
    return found


def ledger_hours(span: JobSpan, since: float, until: float) -> JobHours:
    hours = _overlap_s(span.started, span.ended, since, until) / 3600
    job = span.job if span.rank == 0 else f"{span.job}.{span.rank}"
    return JobHours(job, span.deployment, hours * span.gpus, hours * span.cpus, "ledger")


def parse_tres(text: str) -> dict[str, float]:
    """``billing=2,cpu=2,gres/gpu=1,mem=2G,node=1`` as numbers (``mem=2G`` is left out). GPUs
    are read from the plain ``gres/gpu``, never from the typed ``gres/gpu:a100`` that sacct
    lists beside it, so they are not counted twice."""
    counts: dict[str, float] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if match := re.fullmatch(r"(\d+(?:\.\d+)?)", value):
            counts[name] = float(match.group(1))
    return counts


def _overlap_s(start: float, end: float, since: float, until: float) -> float:
    return max(0.0, min(end, until) - max(start, since))


def _sacct_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%dT%H:%M:%S")
