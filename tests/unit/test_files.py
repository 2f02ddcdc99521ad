"""The end of a log, as an error message quotes it."""

from __future__ import annotations

from pathlib import Path

from slurm_llm._files import last_lines, tail


def test_tail_gives_the_last_lines_of_a_log(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text("".join(f"line {n}\n" for n in range(1, 101)))
    assert tail(log, 3) == "line 98\nline 99\nline 100"


def test_a_short_log_is_given_whole(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text("only\nthese\n")
    assert tail(log, 20) == "only\nthese"


def test_a_missing_log_gives_what_the_caller_says_or_nothing(tmp_path: Path) -> None:
    assert tail(tmp_path / "none.log", 20) == ""
    assert tail(tmp_path / "none.log", 20, missing="(no log yet)") == "(no log yet)"


def test_bytes_that_are_not_utf8_do_not_hide_the_log(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_bytes(b"ok\n\xff broken\n")
    assert tail(log, 2) == "ok\n\ufffd broken"


def test_last_lines_of_a_text() -> None:
    assert last_lines("a\nb\r\nc", 2) == "b\nc"
    assert last_lines("", 5) == ""
