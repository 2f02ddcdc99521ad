"""Usage records: written once a second by their own thread, read back from every router's
file, a line cut short by a crash skipped."""

from __future__ import annotations

import json
import resource
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slurm_llm import _usage
from slurm_llm._polling import wait_until
from slurm_llm._usage import (
    TokensUsedSince,
    UsageLog,
    UsageRecord,
    json_lines,
    read_usage,
    tokens_used_since,
)


def record(key: str, at: float, prompt: int = 10, completion: int = 5) -> UsageRecord:
    return UsageRecord(at=at, key=key, account="physics", model="m", endpoint="/v1/completions",
                       priority="interactive", status=200, prompt_tokens=prompt,
                       completion_tokens=completion, latency_s=0.5, replica="http://r")  # fmt: skip


TEXT = st.text(alphabet=st.sampled_from('},{"at":\\\nab'), max_size=20)  # the separator's bytes
RECORDS = st.builds(
    UsageRecord, at=st.floats(0, 2e9), key=TEXT, account=st.none() | TEXT, model=TEXT,
    endpoint=TEXT, priority=TEXT, status=st.integers(100, 599), prompt_tokens=st.integers(0, 2**70),
    completion_tokens=st.integers(0, 2**70), latency_s=st.floats(0, 1e4), replica=st.none() | TEXT,
    deployment=st.none() | TEXT, job=st.none() | TEXT,
)  # fmt: skip


@given(st.lists(RECORDS, max_size=5))
def test_records_become_one_line_each_whatever_their_strings_hold(
    records: list[UsageRecord],
) -> None:
    lines = json_lines(records).decode().splitlines()
    assert [json.loads(line) for line in lines] == [asdict(r) for r in records]


def test_records_reach_the_file_within_the_flush_interval(tmp_path: Path) -> None:
    log = UsageLog(tmp_path, flush_every_s=0.05)
    log.record(record("alice", time.time()))
    deadline = time.monotonic() + 5
    while not list(read_usage(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r.key for r in read_usage(tmp_path)] == ["alice"]
    log.record(record("bob", time.time()))
    log.close()  # flushes what is pending
    assert [r.key for r in read_usage(tmp_path)] == ["alice", "bob"]


def test_every_router_s_file_is_read_and_a_torn_line_skipped(tmp_path: Path) -> None:
    for router in ("a", "b"):
        log = UsageLog(tmp_path, flush_every_s=60)
        log.path = tmp_path / f"{router}.jsonl"
        log.record(record(f"key-{router}", 100.0))
        log.close()
    with (tmp_path / "b.jsonl").open("a") as torn:
        torn.write('{"at": 101.0, "key": "cut sho')
    assert sorted(r.key for r in read_usage(tmp_path)) == ["key-a", "key-b"]


@pytest.fixture
def logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[pytest.LogCaptureFixture]:
    """What ``_usage`` logs, straight from its logger: a CLI test may have stopped slurm_llm's
    records reaching the root."""
    _usage.log.addHandler(caplog.handler)
    monkeypatch.setattr(_usage.log, "disabled", False)
    yield caplog
    _usage.log.removeHandler(caplog.handler)


def test_the_flushing_outlives_an_unexpected_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged: pytest.LogCaptureFixture
) -> None:
    calls = []

    def fails_once(records: list[UsageRecord]) -> bytes:
        calls.append(len(records))
        if len(calls) == 1:
            raise RuntimeError("a bug in writing records")
        return json_lines(records)

    monkeypatch.setattr(_usage, "json_lines", fails_once)
    log = UsageLog(tmp_path, flush_every_s=0.05)
    log.record(record("alice", time.time()))  # its flush fails, and says so
    assert wait_until(lambda: calls, timeout=5, every=0.02)
    log.record(record("bob", time.time()))
    assert wait_until(lambda: list(read_usage(tmp_path)), timeout=5, every=0.02)
    log.close()
    assert [r.key for r in read_usage(tmp_path)] == ["bob"]
    assert "cannot write usage records" in logged.text


def test_tokens_since_each_moment_per_key_in_one_read(tmp_path: Path) -> None:
    log = UsageLog(tmp_path, flush_every_s=60)
    midnight, month = datetime(2026, 12, 2, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    log.record(record("alice", midnight.timestamp() - 1, 100, 100))  # yesterday
    log.record(record("alice", midnight.timestamp() + 1, 10, 5))
    unread = record("bob", midnight.timestamp() + 2, 0, 0)
    unread.estimated_tokens = 2  # a TGI stream: what the key was charged counts
    log.record(unread)
    log.close()
    assert tokens_used_since(tmp_path, [midnight, month]) == {
        midnight: {"alice": 15, "bob": 2}, month: {"alice": 215, "bob": 2}
    }  # fmt: skip
    assert tokens_used_since(tmp_path, [midnight], skip=log.path) == {midnight: {}}  # its own


def test_a_usage_file_that_cannot_be_read_leaves_the_others_read(
    tmp_path: Path, logged: pytest.LogCaptureFixture
) -> None:
    log = UsageLog(tmp_path, flush_every_s=60)
    log.record(record("alice", 100.0))
    log.close()
    (tmp_path / "a-removed-meanwhile.jsonl").mkdir()  # sorted first; opening it fails
    with log.path.open("ab") as cut:
        cut.write(b'{"at": 101.0, "key": "\xc3')  # a crash in the middle of a character
    assert [r.key for r in read_usage(tmp_path)] == ["alice"]
    assert "cannot read the usage file" in logged.text


def test_a_failed_write_keeps_the_records_for_the_next_flush(tmp_path: Path) -> None:
    log = UsageLog(tmp_path, flush_every_s=60)
    log.path = tmp_path / "missing" / "usage.jsonl"  # its folder is not there: the write fails
    log.record(record("alice", 100.0))
    log.flush()
    (tmp_path / "missing").mkdir()
    log.close()
    assert [r.key for r in read_usage(tmp_path / "missing")] == ["alice"]


def test_a_write_cut_short_is_undone_so_the_retry_writes_each_record_once(tmp_path: Path) -> None:
    """The file-size limit makes the kernel write part of the records and then refuse (EFBIG),
    as a full disk does."""
    log = UsageLog(tmp_path, flush_every_s=60)
    log.record(record("alice", 100.0))
    log.flush()
    log.record(record("bob", 101.0))
    log.record(record("carol", 102.0))
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (log.path.stat().st_size + 100, limits[1]))
        log.flush()  # writes 100 bytes of bob's line, then fails
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    log.close()
    assert [r.key for r in read_usage(tmp_path)] == ["alice", "bob", "carol"]


def test_the_usage_files_are_read_on_from_where_the_last_read_stopped(tmp_path: Path) -> None:
    midnight = datetime(2026, 12, 2, tzinfo=UTC)
    log = UsageLog(tmp_path, flush_every_s=60)
    log.record(record("alice", midnight.timestamp() + 1, 10, 5))
    log.flush()
    used = TokensUsedSince(tmp_path)
    assert used([midnight]) == {midnight: {"alice": 15}}
    read = log.path.read_bytes()  # what was read is not read again: a change to it goes unseen
    log.path.write_bytes(read.replace(b'"alice"', b'"alXce"'))
    log.record(record("alice", midnight.timestamp() + 2, 1, 1))
    log.flush()
    with log.path.open("ab") as writing:
        writing.write(b'{"at": 1796256000.0, "key": "bob"')  # a line still being written
    assert used([midnight]) == {midnight: {"alice": 17}}  # the new record, not the half line
    with log.path.open("ab") as writing:  # the line ends (as a record it is not whole)
        writing.write(b"}\n")
    log.record(record("bob", midnight.timestamp() + 3, 2, 2))
    log.close()
    assert used([midnight]) == {midnight: {"alice": 17, "bob": 4}}
    day_after = datetime(2026, 12, 3, tzinfo=UTC)
    assert used([day_after]) == {day_after: {}}  # other moments: every file from its start
