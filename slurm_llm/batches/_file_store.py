"""Uploaded and produced files (the OpenAI Files API), kept under ``<home>/files/``.

Each file is its content (``<id>``) and a small JSON record beside it (``<id>.json``) saying
what it is, whose it is and what it holds. An upload is streamed to a temporary file and renamed
into place before its record is written, so a file a client can see is always whole: a router
killed mid-upload leaves only a temporary file, never a listed file cut short. Files live on the
storage every node shares, so any router of the site serves any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pydantic import BaseModel, ValidationError

from slurm_llm._files import remove_durably, write_atomic
from slurm_llm._paths import home_dir

Purpose = Literal["batch", "batch_output"]
UPLOAD_PREFIX = ".upload-"


class FileRecord(BaseModel):
    """A file as the OpenAI API describes it, plus its owner (never shown to clients)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Purpose
    status: Literal["processed"] = "processed"
    owner: str  # the hash of the key that uploaded it (or the batch's), "-" without keys

    def public(self) -> dict[str, Any]:
        return self.model_dump(exclude={"owner"})


class FileTooLarge(ValueError):
    pass


def new_id(prefix: str) -> str:
    """``file-…``, ``batch_…``: OpenAI's prefixes, then 24 random hex digits."""
    return prefix + secrets.token_hex(12)


class FileStore:
    def __init__(self, home: Path | None = None) -> None:
        self.folder = home_dir(home) / "files"

    def content_path(self, file_id: str) -> Path:
        return self.folder / file_id

    def _record_path(self, file_id: str) -> Path:
        return self.folder / f"{file_id}.json"

    async def receive(
        self, chunks: AsyncIterator[bytes], filename: str, purpose: Purpose, owner: str,
        max_bytes: int,
    ) -> FileRecord:  # fmt: skip
        """Streams an upload to disk (never whole in memory); ``FileTooLarge`` past
        ``max_bytes``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=UPLOAD_PREFIX, suffix=".tmp")
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:  # written off the event loop: storage can be slow
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise FileTooLarge(f"the file is larger than {max_bytes} bytes")
                    await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(_sync, out)
            return await asyncio.to_thread(self.adopt, Path(tmp), filename, purpose, owner, size)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def adopt(self, path: Path, filename: str, purpose: Purpose, owner: str,
              size: int | None = None, file_id: str | None = None) -> FileRecord:  # fmt: skip
        """Makes ``path`` (on the same filesystem) a file of the store, by renaming it. With a
        ``file_id`` chosen (and saved) before, it may be called again after a crash half-way:
        a content already moved is kept."""
        target = self.content_path(file_id) if file_id else None
        if target is not None and target.exists() and not path.exists():
            size = target.stat().st_size
        record = FileRecord(
            id=file_id or new_id("file-"),
            bytes=path.stat().st_size if size is None else size,
            created_at=int(time.time()), filename=filename, purpose=purpose, owner=owner,
        )  # fmt: skip
        self.folder.mkdir(parents=True, exist_ok=True)
        if path.exists():
            os.replace(path, self.content_path(record.id))
        # Then it is seen; write_atomic's sync of the folder makes the rename above durable too.
        write_atomic(self._record_path(record.id), record.model_dump_json())
        return record

    def remove_stale_uploads(self, older_than_s: float = 86400) -> int:
        """Removes uploads a killed router left half-way (those not touched for a day, so
        another router's upload in progress is left alone); how many."""
        removed = 0
        for path in self.folder.glob(f"{UPLOAD_PREFIX}*.tmp") if self.folder.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime > older_than_s:
                    path.unlink()
                    removed += 1
        return removed

    def get(self, file_id: str) -> FileRecord | None:
        if not is_store_id(file_id, "file-"):
            return None
        try:
            return FileRecord.model_validate_json(self._record_path(file_id).read_bytes())
        except (FileNotFoundError, ValidationError):
            return None

    def records(self) -> Iterator[FileRecord]:
        """Every file, newest first."""
        found = []
        for path in self.folder.glob("file-*.json") if self.folder.is_dir() else ():
            if (record := self.get(path.stem)) is not None:
                found.append(record)
        yield from sorted(found, key=lambda r: (r.created_at, r.id), reverse=True)

    def delete(self, file_id: str) -> bool:
        """The record goes first, so a half-deleted file is never listed."""
        found = remove_durably(self._record_path(file_id))
        with contextlib.suppress(FileNotFoundError):
            self.content_path(file_id).unlink()
        return found


def _sync(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


def is_store_id(text: str, prefix: str) -> bool:
    """Ids of the form ``new_id`` makes only: nothing else a client sends reaches a path."""
    tail = text.removeprefix(prefix)
    return len(text) == len(prefix) + 24 and all(c in "0123456789abcdef" for c in tail)
