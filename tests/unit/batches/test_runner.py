"""A batch's run against a stand-in ``send`` (a fake of the router's, named as such): every
line answered once, resumable after a stop at any point, validation before any line is sent,
cancel and expiry. The same against real replicas and a killed router is in
``tests/integration/test_router_batches.py``."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from slurm_llm.batches._batch_store import BatchRecord, BatchStore
from slurm_llm.batches._file_store import FileStore
from slurm_llm.batches._input import InputLine, bounded_lines
from slurm_llm.batches._runner import BatchRun

ENDPOINT = "/v1/chat/completions"


def line(n: int, **changes: Any) -> dict[str, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": f"Say {n}"}]}
    return {"custom_id": f"req-{n}", "method": "POST", "url": ENDPOINT, "body": body, **changes}


def no_problem(endpoint: str, body: dict[str, Any]) -> str | None:
    return None if body.get("model") == "m" else f"model {body.get('model')!r} is not served here"


class StandInSend:
    """A fake of the router's send: answers each line at once, or only the first
    ``answer_first`` (the others wait until the run is stopped), and records what it was
    sent."""

    def __init__(self, answer_first: int | None = None, takes_s: float = 0.0) -> None:
        self.sent: list[str] = []
        self.answer_first = answer_first
        self.takes_s = takes_s

    async def __call__(self, request: InputLine) -> tuple[int, Any]:
        self.sent.append(request.custom_id)
        if self.answer_first is not None and len(self.sent) > self.answer_first:
            await asyncio.Event().wait()  # in flight until cancelled
        await asyncio.sleep(self.takes_s)
        if request.body.get("fail"):
            return 400, {"error": {"message": "the engine refused it"}}
        usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
        return 200, {"choices": [{"message": {"content": request.custom_id}}], "usage": usage}


def submit(home: Path, lines: list[dict[str, Any]] | str, **window: int) -> BatchRecord:
    files, batches = FileStore(home), BatchStore(home)
    path = home / "input.jsonl"
    path.write_text(
        lines if isinstance(lines, str) else "".join(json.dumps(x) + "\n" for x in lines)
    )
    source = files.adopt(path, "input.jsonl", "batch", "alice")
    record = batches.create(ENDPOINT, source.id, "24h", "alice", "alice", None)
    if window:
        record = record.model_copy(update={"expires_at": int(time.time()) + window["seconds"]})
        batches.save(record)
    return record


def runner(home: Path, record: BatchRecord, send: StandInSend, limit: int = 4) -> BatchRun:
    return BatchRun(record, BatchStore(home), FileStore(home), send, no_problem,
                    lambda model: limit, flush_every_s=0.02)  # fmt: skip


def output(home: Path, record: BatchRecord, which: str = "output_file_id") -> list[dict[str, Any]]:
    file_id = getattr(record, which)
    assert file_id is not None, f"no {which}"
    text = FileStore(home).content_path(file_id).read_text()
    return [json.loads(raw) for raw in text.splitlines()]


def test_every_line_is_answered_once_and_the_output_is_a_file(tmp_path: Path) -> None:
    lines = [line(n) for n in range(50)] + [line(50, body={"model": "m", "fail": True})]
    send = StandInSend()
    done = asyncio.run(runner(tmp_path, submit(tmp_path, lines), send).run())
    assert done.status == "completed" and done.completed_at is not None
    assert done.request_counts.model_dump() == {"total": 51, "completed": 50, "failed": 1}
    assert (done.usage.input_tokens, done.usage.output_tokens) == (500, 100)
    answers = output(tmp_path, done)
    assert sorted(a["custom_id"] for a in answers) == sorted(f"req-{n}" for n in range(50))
    assert all(a["response"]["status_code"] == 200 and a["error"] is None for a in answers)
    assert [e["custom_id"] for e in output(tmp_path, done, "error_file_id")] == ["req-50"]
    assert len(send.sent) == 51
    record = FileStore(tmp_path).get(done.output_file_id or "")
    assert record is not None and record.purpose == "batch_output" and record.owner == "alice"


def test_a_run_stopped_half_way_resumes_without_losing_or_repeating_a_line(tmp_path: Path) -> None:
    record = submit(tmp_path, [line(n) for n in range(40)])

    async def stop_half_way() -> None:
        send = StandInSend(answer_first=20)
        task = asyncio.create_task(runner(tmp_path, record, send).run())
        while len(send.sent) < 24:  # 20 answered, 4 in flight
            await asyncio.sleep(0.001)
        task.cancel()  # the router stops (or dies) here
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stop_half_way())
    output_path = BatchStore(tmp_path).output_path(record.id)
    with output_path.open("a") as torn:  # and a kill cut the last line short
        torn.write('{"id": "batch_req_x", "custom_id": "req-3')
    stopped = BatchStore(tmp_path).get(record.id)
    assert stopped is not None and stopped.status == "in_progress"
    send = StandInSend()
    done = asyncio.run(runner(tmp_path, stopped, send).run())
    ids = [a["custom_id"] for a in output(tmp_path, done)]
    assert sorted(ids) == sorted(f"req-{n}" for n in range(40)) and len(ids) == 40
    assert len(send.sent) == 20  # only what was not answered before
    assert done.request_counts.completed == 40
    assert done.usage.total_tokens == 40 * 12  # counted again from the file on resuming


def test_bad_lines_fail_the_batch_with_their_numbers_before_any_is_sent(tmp_path: Path) -> None:
    text = "\n".join([
        json.dumps(line(1)),
        "{not json",
        json.dumps(line(1)),  # the same custom_id again
        json.dumps(line(3, url="/v1/embeddings")),
        json.dumps(line(4, body={"model": "llama-9000"})),
        json.dumps({"method": "POST", "url": ENDPOINT, "body": {}}),
        json.dumps(line(7, body={**line(7)["body"], "temperature": float("nan")})),
    ]) + "\n"  # fmt: skip
    send = StandInSend()
    done = asyncio.run(runner(tmp_path, submit(tmp_path, text), send).run())
    assert done.status == "failed" and send.sent == []
    assert done.errors is not None
    assert [(e.line, e.code) for e in done.errors.data] == [
        (2, "invalid_json_line"), (3, "duplicate_custom_id"), (4, "mismatched_endpoint"),
        (5, "invalid_body"), (6, "missing_custom_id"), (7, "invalid_json_line"),
    ]  # fmt: skip
    assert "llama-9000" in done.errors.data[3].message
    refused = "the line is not JSON: it holds NaN, which JSON does not allow"
    assert done.errors.data[5].message == refused


def test_a_cancelled_batch_ends_with_what_was_answered(tmp_path: Path) -> None:
    record = submit(tmp_path, [line(n) for n in range(30)])

    async def cancel_after_some() -> BatchRecord:
        send = StandInSend(answer_first=4)
        run = runner(tmp_path, record, send)
        task = asyncio.create_task(run.run())
        while len(send.sent) < 8:  # 4 answered, 4 in flight
            await asyncio.sleep(0.001)
        BatchStore(tmp_path).request_cancel(record.id)
        while run.stopping is None:  # the runner sees the marker at its next flush
            await asyncio.sleep(0.001)
        for line_task in run.tasks:  # and the lines in flight end (here: cut short)
            line_task.cancel()
        return await task

    done = asyncio.run(cancel_after_some())
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.request_counts.completed == 4
    assert len(output(tmp_path, done)) == 4


def test_an_expired_batch_reports_its_unanswered_lines(tmp_path: Path) -> None:
    record = submit(tmp_path, [line(n) for n in range(10)], seconds=-1)
    done = asyncio.run(runner(tmp_path, record, StandInSend(), limit=1).run())
    assert done.status == "expired"
    expired = output(tmp_path, done, "error_file_id")
    assert {e["error"]["code"] for e in expired} == {"batch_expired"}
    assert done.request_counts.completed + len(expired) == 10


def test_a_batch_expiring_while_it_runs_answers_each_line_once(tmp_path: Path) -> None:
    """Answers still waiting for their flush when the window passes are answers, not lines to
    report as expired."""
    record = submit(tmp_path, [line(n) for n in range(120)], seconds=60)
    record = record.model_copy(update={"expires_at": int(time.time()) + 2})  # in 1-2 s
    BatchStore(tmp_path).save(record)
    run = runner(tmp_path, record, StandInSend(takes_s=0.05), limit=2)
    run.flush_every_s = 0.3  # answers pile up between flushes
    done = asyncio.run(run.run())
    assert done.status == "expired" and done.expired_at is not None
    answered = [a["custom_id"] for a in output(tmp_path, done)]
    expired = [e["custom_id"] for e in output(tmp_path, done, "error_file_id")]
    assert answered and expired
    assert sorted(answered + expired) == sorted(f"req-{n}" for n in range(120))
    assert done.request_counts.completed + done.request_counts.failed == 120  # 3 s of lines


def test_a_line_longer_than_the_limit_is_never_read_whole() -> None:
    file = io.BytesIO(b"ab\n" + b"x" * 50 + b"\ncd\n" + b"y" * 30)
    assert list(bounded_lines(file, limit=10)) == [b"ab\n", None, b"cd\n", None]
