"""Parsing SLURM's answers, and the fallback for sites without accounting.

The PATH stand-ins below are fakes of ``squeue``/``sacct`` (named as such): they reproduce a
site whose accounting is disabled, which the local test cluster (it runs slurmdbd) is not.
"""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path

import pytest

from slurm_llm.jobs._slurm_state import (
    ENDED,
    UNKNOWN,
    JobState,
    SlurmStates,
    parse_sacct,
    parse_squeue,
)


def test_squeue_lines_become_states_with_pending_reasons() -> None:
    states = parse_squeue("12_0|RUNNING|None|n1|2026-12-01T14:00:00\n12_1|PENDING|Resources||N/A\n")
    started = time.mktime((2026, 12, 1, 14, 0, 0, 0, 0, -1))
    assert states == {
        "12_0": JobState("RUNNING", None, "n1", started),
        "12_1": JobState("PENDING", "Resources", None),  # no start expected yet
    }
    assert states["12_0"].active and not states["12_1"].hopeless


def test_a_pending_reason_that_waiting_cannot_fix_is_hopeless() -> None:
    assert JobState("PENDING", "PartitionConfig").hopeless
    assert JobState("PENDING", "BadConstraints").hopeless
    assert not JobState("PENDING", "Priority").hopeless


def test_sacct_states_drop_the_cancelling_user_and_keep_the_last_line() -> None:
    states = parse_sacct("7_0|CANCELLED by 0\n8|REQUEUED\n8|RUNNING\n9|FAILED\n")
    assert {k: v.state for k, v in states.items()} == {
        "7_0": "CANCELLED",
        "8": "RUNNING",
        "9": "FAILED",
    }


def fake_command(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_without_accounting_ended_jobs_are_reported_as_ended_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_command(tmp_path, "squeue", 'echo "5_0|RUNNING|None|n2|N/A"')
    fake_command(
        tmp_path, "sacct", 'echo "sacct: error: Slurm accounting storage is disabled" >&2; exit 1'
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    slurm = SlurmStates()
    with caplog.at_level(logging.WARNING, logger="slurm_llm"):
        states = slurm.query(["5_0", "5_1"])
    assert states == {"5_0": JobState("RUNNING", None, "n2"), "5_1": JobState(ENDED)}
    assert slurm.accounting is False
    assert "accounting disabled" in caplog.text
    caplog.clear()
    slurm.query(["5_1"])
    assert caplog.text == ""  # warned once


def test_no_jobs_means_no_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert SlurmStates().query([]) == {}


def test_a_waiting_loop_reuses_a_recent_answer_instead_of_asking_slurmctld_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    fake_command(tmp_path, "squeue", f'echo x >> {calls}; echo "5_0|RUNNING|None|n2|N/A"')
    monkeypatch.setenv("PATH", str(tmp_path))
    slurm = SlurmStates()

    def asked() -> int:
        return len(calls.read_text().splitlines())

    assert slurm.query(["5_0"], max_age_s=60) == {"5_0": JobState("RUNNING", None, "n2")}
    slurm.query(["5_0"], max_age_s=60)
    assert asked() == 1
    slurm.query(["5_0"])  # a caller that wants it fresh
    assert asked() == 2
    slurm.query(["5_0", "5_1"], max_age_s=60)  # other jobs: the last answer does not cover them
    assert asked() == 3


def test_when_slurmctld_does_not_answer_every_job_is_unknown_not_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_command(tmp_path, "squeue", 'echo "slurm_load_jobs error: Socket timed out" >&2; exit 1')
    fake_command(tmp_path, "sacct", 'echo "5_0|COMPLETED"')
    monkeypatch.setenv("PATH", str(tmp_path))
    assert SlurmStates().query(["5_0", "5_1"]) == {
        "5_0": JobState(UNKNOWN),
        "5_1": JobState(UNKNOWN),
    }


def test_jobs_squeue_no_longer_knows_are_looked_up_in_accounting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_command(tmp_path, "squeue", 'echo "slurm_load_jobs error: Invalid job id specified" >&2;'
                 " exit 1")  # fmt: skip
    fake_command(tmp_path, "sacct", 'echo "5_0|CANCELLED by 0"')
    monkeypatch.setenv("PATH", str(tmp_path))
    assert SlurmStates().query(["5_0"]) == {"5_0": JobState("CANCELLED")}


def test_a_sacct_hiccup_on_a_site_with_accounting_leaves_ended_jobs_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_command(tmp_path, "squeue", "true")
    fake_command(tmp_path, "sacct", "exit 1")
    monkeypatch.setenv("PATH", str(tmp_path))
    slurm = SlurmStates()
    slurm.accounting = True
    assert slurm.query(["5_0"]) == {"5_0": JobState(UNKNOWN)}
    assert slurm.accounting is True
