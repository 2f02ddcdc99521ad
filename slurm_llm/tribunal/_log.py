"""The verdict log: every tribunal run, appended as one JSON line and flushed to disk.

One ``write`` of a whole line to a file opened with ``O_APPEND``, under an exclusive ``flock``
(several routers may share the file), then ``fsync``: once a run is reported to its client, a
``kill -9`` of the router cannot lose it. A line cut short by a crash during the write is
skipped by readers, with a count, never a failure.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurm_llm._paths import home_dir


def default_log_path(home: Path | None = None) -> Path:
    return home_dir(home) / "tribunal" / "verdicts.jsonl"


@dataclass
class LogRead:
    runs: list[dict[str, Any]]
    damaged_lines: int


class VerdictLog:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_log_path()

    def append(self, run: dict[str, Any]) -> None:
        line = (json.dumps(run, separators=(",", ":")) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # end the line a crash cut short, so this run stands alone
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> LogRead:
        runs: list[dict[str, Any]] = []
        damaged = 0
        for line in self._lines():
            try:
                run = json.loads(line)
            except json.JSONDecodeError:
                damaged += 1
                continue
            if isinstance(run, dict):
                runs.append(run)
            else:
                damaged += 1
        return LogRead(runs, damaged)

    def _lines(self) -> Iterator[str]:
        try:
            with self.path.open(errors="replace") as handle:
                yield from (line for line in handle if line.strip())
        except FileNotFoundError:
            return
