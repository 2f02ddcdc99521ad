"""Job hours from ``sacct`` lines and from the launchers' ledger, cut to the report's period;
every expected figure is worked out by hand in its comment.

The PATH stand-in for ``sacct`` is a fake (named as such) of a site without accounting; the
real ``sacct`` of the local cluster is read in ``tests/integration/test_chargeback.py``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from slurm_llm.jobs._job_hours import (
    JobHours,
    deployment_jobs_hours,
    parse_sacct_hours,
    parse_tres,
)
from slurm_llm.node._job_ledger import JobSpan, read_job_spans, write_span
from tests.unit.jobs.test_slurm_state import fake_command

T0 = datetime(2026, 11, 30, 8, 0).timestamp()  # local time, as sacct prints it
HOUR = 3600.0


def test_tres_counts_gpus_once_and_cpus() -> None:
    tres = parse_tres("billing=8,cpu=8,gres/gpu:a100=2,gres/gpu=2,mem=64G,node=1")
    assert (tres["cpu"], tres["gres/gpu"]) == (8, 2)


def test_sacct_lines_give_gpu_and_cpu_hours_cut_to_the_period() -> None:
    lines = "\n".join([
        # 2 GPUs, 8 CPUs, 08:00-11:00, whole in the period: 6 GPU-h, 24 CPU-h
        "101|slurm-llm-chat|2026-11-30T08:00:00|2026-11-30T11:00:00|cpu=8,gres/gpu=2,node=1",
        # started before the period (07:00), ended 09:30: 1.5 h in it, 4 GPUs: 6 GPU-h
        "102|slurm-llm-chat|2026-11-30T07:00:00|2026-11-30T09:30:00|cpu=1,gres/gpu=4",
        # still running (End Unknown): from 10:00 to the period's end 12:00, 1 GPU: 2 GPU-h
        "103_0|slurm-llm-code|2026-11-30T10:00:00|Unknown|cpu=2,gres/gpu=1",
        "104|slurm-llm-code|Unknown|Unknown|cpu=2,gres/gpu=1",  # pending: nothing
        "105|someone-else|2026-11-30T08:00:00|2026-11-30T09:00:00|cpu=2",  # not ours
    ])  # fmt: skip
    hours = parse_sacct_hours(lines, since=T0, until=T0 + 4 * HOUR)
    assert hours == [
        JobHours("101", "chat", 6.0, 24.0, "sacct"),
        JobHours("102", "chat", 6.0, 1.5, "sacct"),
        JobHours("103_0", "code", 2.0, 4.0, "sacct"),
    ]


def test_without_accounting_the_ledger_gives_the_hours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_command(tmp_path, "sacct", 'echo "accounting storage is disabled" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    ledger = tmp_path / "jobs"
    # 2 nodes of one job, 4 GPUs and 32 CPUs each, 09:00-10:30 (1.5 h): 6 GPU-h per node
    for rank in (0, 1):
        write_span(ledger, JobSpan("7", "big", f"n{rank}", rank, 4, 32, T0 + HOUR, T0 + 2.5 * HOUR))
    # a job of another deployment, and one that ended before the period: nothing
    write_span(ledger, JobSpan("8", "small", "n1", 0, 1, 1, T0, T0 + HOUR))
    write_span(ledger, JobSpan("6", "big", "n1", 0, 1, 1, T0 - 2 * HOUR, T0 - HOUR))
    hours = deployment_jobs_hours(["big", "other"], T0, T0 + 4 * HOUR, read_job_spans(ledger))
    assert sorted(hours, key=lambda h: h.job) == [
        JobHours("7", "big", 6.0, 48.0, "ledger"),
        JobHours("7.1", "big", 6.0, 48.0, "ledger"),
    ]
