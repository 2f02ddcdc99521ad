"""The launcher's ledger of what its job holds: written when the job starts, kept up to date
while it runs, ended when it stops."""

from __future__ import annotations

import time
from pathlib import Path

from slurm_llm.node._job_ledger import JobLedger, JobSpan, read_job_spans
from tests.integration.helpers import wait_until


def span(job: str = "41", started: float = 1000.0, rank: int = 0) -> JobSpan:
    return JobSpan(job, "chat", "n1", rank, gpus=4, cpus=16, started=started, ended=started)


def test_a_span_is_on_disk_from_the_start_and_moves_on_until_the_job_stops(
    tmp_path: Path,
) -> None:
    ledger = JobLedger(tmp_path, span(started=time.time()), every_s=0.05)
    ledger.start()
    (first,) = read_job_spans(tmp_path)
    wait_until(lambda: read_job_spans(tmp_path)[0].ended > first.ended, 10, "a rewrite")
    ledger.stop()
    ledger.stop()  # twice is harmless
    (last,) = read_job_spans(tmp_path)
    assert (last.job, last.gpus, last.cpus, last.started) == ("41", 4, 16, first.started)
    assert first.ended < last.ended <= time.time()


def test_a_requeued_job_and_each_node_of_a_job_keep_spans_of_their_own(tmp_path: Path) -> None:
    for each in (span(), span(started=5000.0), span(rank=1)):
        JobLedger(tmp_path, each, every_s=60).stop()
    assert len(read_job_spans(tmp_path)) == 3


def test_unreadable_files_are_skipped(tmp_path: Path) -> None:
    JobLedger(tmp_path, span(), every_s=60).stop()
    (tmp_path / "9.0.1.json").write_text('{"job": "9", "depl')
    assert [s.job for s in read_job_spans(tmp_path)] == ["41"]
    assert read_job_spans(tmp_path / "none") == []
