"""Running one batch: its lines sent as requests, their answers appended to its output and error
files, resumable after any crash.

The output and error files are the checkpoint. Answers are appended and fsynced once a second
(``FLUSH_EVERY_S``); a router killed mid-batch loses at most the answers of that second, and a
line cut short by the kill is cut off when the batch resumes. The lines whose ``custom_id`` is
already in either file are done; every other line is sent again. So no line is lost, and none
is answered twice in the files (a line in flight at the kill is computed twice, written once).

Only the router holding the batch's lock writes its record. ``cancel`` leaves a marker file
beside it, which the runner sees at its next flush: it stops sending, lets the lines in flight
finish, and ends the batch as ``cancelled`` with what was answered. A batch past its completion
window ends as ``expired``; its unanswered lines go to the error file as ``batch_expired``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

from slurm_llm.batches._batch_store import (
    BatchError,
    BatchErrors,
    BatchRecord,
    BatchStore,
    RequestCounts,
)
from slurm_llm.batches._file_store import FileStore, new_id
from slurm_llm.batches._input import BodyCheck, InputLine, input_lines, validate

log = logging.getLogger("slurm_llm.batches")
FLUSH_EVERY_S = 1.0
READ_AHEAD = 256  # input lines read per trip to a thread
T = TypeVar("T")
# One line's answer: its HTTP status and JSON body (the engine's, or the router's error).
Send = Callable[[InputLine], Awaitable[tuple[int, Any]]]


class ResultFile:
    """``output.jsonl`` or ``errors.jsonl``: lines appended once a second, each fsynced; the
    lines and tokens written are counted for the batch's record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending: list[tuple[str, int, int]] = []  # (line, prompt, completion tokens)
        self._pending_lock = threading.Lock()  # the loop adds, a flushing thread takes
        self.lines = self.prompt_tokens = self.completion_tokens = 0

    def recover(self) -> set[str]:
        """The ``custom_id`` of every whole line; a last line cut short by a crash is cut off."""
        if not self.path.exists():
            return set()
        with self.path.open("r+b") as file:
            data_end = file.seek(0, os.SEEK_END)
            whole = _end_of_last_line(file, data_end)
            if whole < data_end:
                file.truncate(whole)
                os.fsync(file.fileno())
        done: set[str] = set()
        with self.path.open("rb") as lines:
            for raw in lines:
                line = json.loads(raw)
                done.add(line["custom_id"])
                self._count(1, *tokens_of(line))
        return done

    def add(self, line: dict[str, Any]) -> None:
        text = json.dumps(line, separators=(",", ":")) + "\n"
        with self._pending_lock:
            self.pending.append((text, *tokens_of(line)))

    def take(self) -> list[tuple[str, int, int]]:
        with self._pending_lock:
            pending, self.pending = self.pending, []
        return pending

    def write(self, pending: list[tuple[str, int, int]]) -> None:
        """Appends and fsyncs (off the event loop); counted once written."""
        if not pending:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write("".join(text for text, _, _ in pending))
            out.flush()
            os.fsync(out.fileno())
        self._count(len(pending), sum(p for _, p, _ in pending), sum(c for _, _, c in pending))

    def _count(self, lines: int, prompt: int, completion: int) -> None:
        self.lines += lines
        self.prompt_tokens += prompt
        self.completion_tokens += completion


def tokens_of(line: dict[str, Any]) -> tuple[int, int]:
    """The (prompt, completion) tokens of an answer line's ``usage``; 0 where it has none."""
    response = line.get("response") or {}
    body = response.get("body") if isinstance(response, dict) else None
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else 0,
            completion if isinstance(completion, int) else 0)  # fmt: skip


def _end_of_last_line(file: BinaryIO, size: int) -> int:
    """The offset just past the last newline (0 if there is none)."""
    position = size
    while position > 0:
        step = min(65536, position)
        file.seek(position - step)
        chunk = file.read(step)
        if (cut := chunk.rfind(b"\n")) >= 0:
            return position - step + cut + 1
        position -= step
    return 0


Ending = Literal["completed", "cancelled", "expired"]


class BatchRun:
    """One batch, run by the router that holds its lock, from wherever it stands.

    The record and the result files are changed under one lock (``_io``), by the event loop
    or by the threads that do the file work; a thread's work is waited for even when the run
    is cancelled, so the batch's lock is never let go while a write is under way."""

    def __init__(
        self,
        record: BatchRecord,
        batches: BatchStore,
        files: FileStore,
        send: Send,
        check_body: BodyCheck,
        limit_for: Callable[[str], int],
        flush_every_s: float = FLUSH_EVERY_S,
    ) -> None:
        """``limit_for(model)``: lines of that model in flight at once (enough to keep its
        replicas' slots full, with some waiting in the router's queue)."""
        self.record = record
        self.batches, self.files = batches, files
        self.send, self.check_body, self.limit_for = send, check_body, limit_for
        self.flush_every_s = flush_every_s
        self.output = ResultFile(batches.output_path(record.id))
        self.errors = ResultFile(batches.errors_path(record.id))
        self.in_flight: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.freed = asyncio.Event()
        self.stopping: Ending | None = None  # cancelled or expired: send no more lines
        self._io = threading.Lock()

    async def run(self) -> BatchRecord:
        if self.record.status == "validating":
            await self._validate()
        if self.record.status in ("in_progress", "cancelling"):
            await self._in_thread(self._finalize, await self._answer())
        elif self.record.status == "finalizing":  # stopped while finalizing
            await self._in_thread(self._finalize, "completed")
        return self.record

    async def _in_thread(self, work: Callable[..., T], *args: Any) -> T:
        """``work`` off the event loop; if the run is cancelled meanwhile, the thread is still
        waited for before the cancellation goes on."""
        job = asyncio.ensure_future(asyncio.to_thread(work, *args))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await job
            raise

    def _save(self, **changes: Any) -> None:
        with self._io:
            self._save_now(**changes)

    def _save_now(self, **changes: Any) -> None:
        self.record = self.record.model_copy(update=changes)
        self.batches.save(self.record)

    async def _validate(self) -> None:
        path = self.files.content_path(self.record.input_file_id)
        try:
            total, errors, models = await self._in_thread(
                validate, path, self.record.endpoint, self.check_body
            )
        except OSError as exc:  # the input went (deleted by hand, a storage error)
            unreadable = f"the input file cannot be read: {exc}"
            total, models = 0, set()
            errors = [BatchError(code="input_unreadable", message=unreadable)]
        now = int(time.time())
        if errors:
            self._save(status="failed", failed_at=now, errors=BatchErrors(data=errors),
                       request_counts=RequestCounts(total=total))  # fmt: skip
            log.warning("batch %s failed validation: %d problem(s)", self.record.id, len(errors))
        else:
            self._save(status="in_progress", in_progress_at=now, models=sorted(models),
                       request_counts=RequestCounts(total=total))  # fmt: skip

    async def _answer(self) -> Ending:
        """Sends every line not answered yet, flushing as it goes; says how it ended."""
        if self.record.status == "cancelling" or self.batches.cancel_requested(self.record.id):
            self.stopping = "cancelled"
        elif time.time() > self.record.expires_at:  # resumed too late
            self.stopping = "expired"
        done = await self._in_thread(self._recover)
        flusher = asyncio.create_task(self._flush_forever())
        try:
            lines = input_lines(self.files.content_path(self.record.input_file_id))
            while self.stopping is None:
                chunk = await self._in_thread(_take, lines, READ_AHEAD)
                if not chunk:
                    break
                for line in chunk:
                    if line.custom_id in done:
                        continue
                    if self.stopping is not None:
                        break
                    await self._start(line)
            while self.tasks:
                await asyncio.wait(set(self.tasks))
        finally:
            for task in list(self.tasks):  # only when the router stops: lines to send again
                task.cancel()
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            # The answers of the last second: kept even when the router is stopping.
            await self._in_thread(self._flush)
        if self.stopping == "expired":
            await self._in_thread(self._expire_rest)
        elif self.stopping == "cancelled":
            if self.record.status != "cancelling":
                await self._in_thread(partial(self._save, status="cancelling",
                                              cancelling_at=int(time.time())))  # fmt: skip
        else:
            await self._in_thread(partial(self._save, status="finalizing",
                                          finalizing_at=int(time.time())))  # fmt: skip
        return self.stopping or "completed"

    def _recover(self) -> set[str]:
        with self._io:
            done = self.output.recover() | self.errors.recover()
            self._count()
        return done

    async def _start(self, line: InputLine) -> None:
        model = str(line.body.get("model"))
        while self.in_flight.get(model, 0) >= max(1, self.limit_for(model)):
            self.freed.clear()
            await self.freed.wait()
            if self.stopping is not None:
                return
        self.in_flight[model] = self.in_flight.get(model, 0) + 1
        task = asyncio.create_task(self._answer_line(line, model))
        self.tasks.add(task)

    async def _answer_line(self, line: InputLine, model: str) -> None:
        try:
            try:
                status, body = await self.send(line)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a line's failure must never end the batch
                log.exception("batch %s line %d failed", self.record.id, line.number)
                status, body = 500, {"error": {"message": f"the router failed: {exc}"}}
            result = {
                "id": new_id("batch_req_"),
                "custom_id": line.custom_id,
                "response": {"status_code": status, "request_id": new_id("req_"), "body": body},
                "error": None,
            }
            (self.output if status == 200 else self.errors).add(result)
        finally:
            self.in_flight[model] -= 1
            self.tasks.discard(asyncio.current_task())
            self.freed.set()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_every_s)
            await self._in_thread(self._flush)
            cancelled = await self._in_thread(self.batches.cancel_requested, self.record.id)
            if self.stopping is None and cancelled:
                self.stopping = "cancelled"
                await self._in_thread(partial(self._save, status="cancelling",
                                              cancelling_at=int(time.time())))  # fmt: skip
            elif self.stopping is None and time.time() > self.record.expires_at:
                self.stopping = "expired"
            self.freed.set()  # a line waiting for room sees the stop

    def _flush(self) -> None:
        with self._io:
            self._flush_now()

    def _flush_now(self) -> None:
        self.output.write(self.output.take())
        self.errors.write(self.errors.take())
        self._count()
        self.batches.save(self.record)

    def _count(self) -> None:
        counts = self.record.request_counts.model_copy(
            update={"completed": self.output.lines, "failed": self.errors.lines}
        )
        prompt = self.output.prompt_tokens + self.errors.prompt_tokens
        completion = self.output.completion_tokens + self.errors.completion_tokens
        usage = self.record.usage.model_copy(update={
            "input_tokens": prompt, "output_tokens": completion,
            "total_tokens": prompt + completion,
        })  # fmt: skip
        self.record = self.record.model_copy(update={"request_counts": counts, "usage": usage})

    def _expire_rest(self) -> None:
        """Every line never answered goes to the error file as ``batch_expired``; the answers
        already written, and those still pending, count as answered."""
        with self._io:
            self._flush_now()
            answered = self._ids(self.output) | self._ids(self.errors)
            for line in input_lines(self.files.content_path(self.record.input_file_id)):
                if line.custom_id not in answered:
                    self.errors.add({
                        "id": new_id("batch_req_"), "custom_id": line.custom_id, "response": None,
                        "error": {"code": "batch_expired",
                                  "message": "the batch's completion window passed first"},
                    })  # fmt: skip
            self._flush_now()

    def _ids(self, results: ResultFile) -> set[str]:
        if not results.path.exists():
            return set()
        with results.path.open("rb") as lines:
            return {json.loads(raw)["custom_id"] for raw in lines}

    def _finalize(self, ending: Ending) -> None:
        """Output and error files become files of the store (ids chosen and saved first, so a
        crash here is finished by the next run), then the batch ends."""
        with self._io:
            record = self.record
            ids: dict[str, str | None] = {"output_file_id": record.output_file_id,
                                          "error_file_id": record.error_file_id}  # fmt: skip
            paths = {"output_file_id": self.output.path, "error_file_id": self.errors.path}
            for field, path in paths.items():
                if ids[field] is None and path.exists() and path.stat().st_size:
                    ids[field] = new_id("file-")
            self._save_now(**ids)
            for field, path in paths.items():
                if (file_id := ids[field]) is not None:
                    self.files.adopt(path, f"{record.id}_{field.split('_')[0]}.jsonl",
                                     "batch_output", record.owner, file_id=file_id)  # fmt: skip
            self._save_now(**{"status": ending, f"{ending}_at": int(time.time())})


def _take(lines: Iterator[InputLine], count: int) -> list[InputLine]:
    return list(itertools.islice(lines, count))
