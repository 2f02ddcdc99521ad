"""Batches (the OpenAI Batch API), kept under ``<home>/batches/<id>/`` on the shared storage.

A batch's folder holds its record (``batch.json``, rewritten atomically at each change of
status and, while it runs, every second or so with its counts), the answers so far
(``output.jsonl``) and the failed lines (``errors.jsonl``), and a lock file: the router running
the batch holds an ``flock`` on it, which the kernel drops when that router dies, however it
dies. Any router that finds an unfinished batch with a free lock takes it over and resumes it.

Statuses follow OpenAI's: ``validating → in_progress → finalizing → completed``, or
``failed`` (the input did not validate), ``expired`` (the completion window passed),
``cancelling → cancelled``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, ValidationError

from slurm_llm._files import write_atomic
from slurm_llm._paths import home_dir
from slurm_llm.batches._file_store import is_store_id, new_id

Status = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
    "cancelled",
]  # fmt: skip
UNFINISHED: frozenset[Status] = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
ENDED: frozenset[Status] = frozenset(get_args(Status)) - UNFINISHED
WINDOWS_S = {"24h": 24 * 3600}  # completion windows OpenAI's API takes


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    """Tokens of the lines answered so far, as the engines counted them."""

    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError] = Field(default_factory=list)


class BatchRecord(BaseModel):
    """A batch as the OpenAI API describes it, plus its owner (never shown to clients)."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str = "24h"
    status: Status = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    usage: BatchUsage = Field(default_factory=BatchUsage)
    metadata: dict[str, str] | None = None
    # Never shown to clients: the key that owns it (its hash: a key's name can be a position
    # in a flat list), that key's name (for usage records), and the models its lines use (a
    # router takes a batch over only if it serves them).
    owner: str
    key: str = "-"
    models: list[str] = Field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return self.model_dump(exclude={"owner", "key", "models"})

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED


class BatchStore:
    def __init__(self, home: Path | None = None) -> None:
        self.folder = home_dir(home) / "batches"

    def folder_of(self, batch_id: str) -> Path:
        return self.folder / batch_id

    def output_path(self, batch_id: str) -> Path:
        return self.folder_of(batch_id) / "output.jsonl"

    def errors_path(self, batch_id: str) -> Path:
        return self.folder_of(batch_id) / "errors.jsonl"

    def lock_path(self, batch_id: str) -> Path:
        return self.folder_of(batch_id) / "lock"

    def request_cancel(self, batch_id: str) -> None:
        """A marker, not a change of the record: only the router running the batch writes
        that, and it sees the marker within a second (or when it takes the batch over)."""
        write_atomic(self.folder_of(batch_id) / "cancel", str(int(time.time())))

    def cancel_requested(self, batch_id: str) -> bool:
        return (self.folder_of(batch_id) / "cancel").exists()

    def create(self, endpoint: str, input_file_id: str, window: str, owner: str, key: str,
               metadata: dict[str, str] | None) -> BatchRecord:  # fmt: skip
        now = int(time.time())
        record = BatchRecord(
            id=new_id("batch_"), endpoint=endpoint, input_file_id=input_file_id,
            completion_window=window, created_at=now, expires_at=now + WINDOWS_S[window],
            metadata=metadata, owner=owner, key=key,
        )  # fmt: skip
        self.save(record)
        return record

    def save(self, record: BatchRecord) -> None:
        write_atomic(self.folder_of(record.id) / "batch.json", record.model_dump_json())

    def get(self, batch_id: str) -> BatchRecord | None:
        if not is_store_id(batch_id, "batch_"):
            return None
        try:
            return BatchRecord.model_validate_json(
                (self.folder_of(batch_id) / "batch.json").read_bytes()
            )
        except (FileNotFoundError, ValidationError):
            return None

    def records(self) -> Iterator[BatchRecord]:
        """Every batch, newest first."""
        found = []
        for path in self.folder.glob("batch_*/batch.json") if self.folder.is_dir() else ():
            if (record := self.get(path.parent.name)) is not None:
                found.append(record)
        yield from sorted(found, key=lambda r: (r.created_at, r.id), reverse=True)
