"""Events keep their numbers: followers never miss or repeat one, even across trimming."""

from __future__ import annotations

from pathlib import Path

from slurm_llm.control._event_log import KEEP_EVENTS, EventLog


def test_events_are_numbered_and_followed_by_number(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    log.append(["a", "b"])
    seen = log.read()[-1].seq
    log.append(["c"])
    assert [e.text for e in log.read(after=seen)] == ["c"]
    assert [e.seq for e in log.read()] == [1, 2, 3]


def test_trimming_keeps_the_numbers_so_a_follower_loses_nothing(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    for n in range(2 * KEEP_EVENTS):
        log.append([f"event {n}"])
    seen = log.read()[-1].seq
    log.append(["after the trim"])
    assert len(log.read()) == KEEP_EVENTS + 1
    assert [e.text for e in log.read(after=seen)] == ["after the trim"]
    assert log.read()[-1].seq == 2 * KEEP_EVENTS + 1


def test_a_line_cut_by_a_crash_costs_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.append(["whole"])
    with path.open("a") as out:
        out.write('{"seq": 2, "time": 0, "te')  # the writer died here
    log.append(["next"])
    assert [e.text for e in log.read()] == ["whole", "next"]
