"""The verdict log keeps every run and reads past a line a crash cut short."""

from __future__ import annotations

from pathlib import Path

from slurm_llm.tribunal import VerdictLog


def test_runs_are_appended_and_read_back(tmp_path: Path) -> None:
    log = VerdictLog(tmp_path / "v.jsonl")
    for n in range(3):
        log.append({"run": n})
    assert [r["run"] for r in log.read().runs] == [0, 1, 2]


def test_a_line_cut_short_is_skipped_and_counted(tmp_path: Path) -> None:
    log = VerdictLog(tmp_path / "v.jsonl")
    log.append({"run": 0})
    with log.path.open("a") as handle:
        handle.write('{"run": 1, "answ')  # what a crash mid-write leaves
    log.append({"run": 2})
    read = log.read()
    assert read.damaged_lines == 1
    assert [r["run"] for r in read.runs] == [0, 2], "the next run starts on a line of its own"


def test_an_absent_log_reads_as_empty(tmp_path: Path) -> None:
    assert VerdictLog(tmp_path / "none.jsonl").read().runs == []
