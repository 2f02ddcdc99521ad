"""Usage records: one line per request a router answered, who asked, which model and replica,
the tokens, the time it took and how it ended; read back by ``slurm-llm usage`` and by the
router's daily and monthly quotas.

Each router process appends to a file of its own under ``<home>/usage/`` (JSON lines), so the
files live on the shared storage slurm-llm already needs and no two writers share a file: no
lock, and no database whose locking breaks on a network filesystem (SQLite's WAL mode does).
Records are buffered and written, then fsynced, once a second by a thread of their own, so the
hot path only appends to a queue. A ``kill -9`` loses at most the last second of records; a
line cut short by it is skipped when the files are read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import orjson

from slurm_llm._paths import home_dir

log = logging.getLogger("slurm_llm.usage")
FLUSH_EVERY_S = 1.0
ANONYMOUS = "-"  # the key name of requests to a router that needs no key


@dataclass
class UsageRecord:
    """One answered request. Never changed once made; not frozen, because a frozen dataclass
    of this many fields costs microseconds to make, on every request; not slotted, because
    orjson writes a dataclass with a ``__dict__`` three times as fast."""

    at: float  # seconds since the epoch, when the answer ended
    key: str  # the key's name, never the key
    account: str | None
    model: str
    endpoint: str
    priority: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    replica: str | None  # the URL that answered (the last one, after a failover)
    # The deployment and SLURM job of that replica, which the chargeback report joins with the
    # jobs' GPU-hours; None for a fixed backend (and in records from before they were kept).
    deployment: str | None = None
    job: str | None = None
    # Tokens counted against the key's limits where no engine count was read (a TGI stream, a
    # client that left early): the request's estimate, so that a restarted router, and the
    # other workers, count for the key's quotas what this one did.
    estimated_tokens: int = 0

    @property
    def tokens(self) -> int:
        """What the engine counted."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def charged_tokens(self) -> int:
        """What the key's quotas counted: the engine's count, or the estimate without one."""
        return self.tokens + self.estimated_tokens


def usage_dir(home: Path | None = None) -> Path:
    return home_dir(home) / "usage"


class UsageLog:
    """This process's usage file, written once a second."""

    def __init__(self, folder: Path | None = None, flush_every_s: float = FLUSH_EVERY_S) -> None:
        self.folder = folder or usage_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        started = time.strftime("%Y%m%d-%H%M%S")
        # Its own file even beside another log of the same process opened in the same second
        # (two RouterThreads): a router leaves its own file out when it reads the others'.
        unique = secrets.token_hex(3)
        self.path = self.folder / f"{socket.gethostname()}-{os.getpid()}-{started}-{unique}.jsonl"
        self.flush_every_s = flush_every_s
        # The event loop appends, the flusher takes from the other end: a deque's ends are
        # safe to use from two threads without a lock, which the hot path would have to take.
        self._pending: deque[UsageRecord] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flush_forever, name="usage-log", daemon=True)
        self._thread.start()

    def record(self, record: UsageRecord) -> None:
        self._pending.append(record)

    def flush(self) -> None:
        """Writes what is pending; a write that fails (a full disk, a stale NFS handle) is cut
        back to where it began and keeps the records for the next try, so none is lost or
        written twice, and says so, rather than ending the flushing."""
        pending = []
        with contextlib.suppress(IndexError):
            while True:
                pending.append(self._pending.popleft())
        if not pending:
            return
        try:
            self._write(pending)
        except OSError as exc:
            log.error("cannot write usage records to %s (%s); retrying", self.path, exc)
            self._pending.extendleft(reversed(pending))  # ahead of those added meanwhile

    def _write(self, pending: list[UsageRecord]) -> None:
        data = json_lines(pending)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size  # this process is the file's only writer
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                # Lines written before the failure would be written again by the retry.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()

    def _flush_forever(self) -> None:
        while not self._stop.wait(self.flush_every_s):
            try:
                self.flush()
            except Exception:  # a bug must not end the flushing: later records still go out
                log.exception("cannot write usage records to %s; this flush's are lost", self.path)


def json_lines(records: list[UsageRecord]) -> bytes:
    """The records as JSON lines, from one orjson call for them all (seven times as fast as
    one call per record): the list's ``},{"at":`` between records becomes a line break. It
    occurs nowhere else, since a record is flat, ``at`` is its first field, and a quote inside
    a string is always escaped."""
    if not records:
        return b""
    try:
        return orjson.dumps(records)[1:-1].replace(b'},{"at":', b'}\n{"at":') + b"\n"
    except orjson.JSONEncodeError:  # a count past 64 bits (a replica's odd usage): slowly
        return b"".join(json.dumps(asdict(r)).encode() + b"\n" for r in records)


def read_usage(
    folder: Path | None = None, since: float = 0.0, skip: Path | None = None
) -> Iterator[UsageRecord]:
    """Every record at or after ``since``, from every router's file but ``skip``. A line cut
    short by a crash is skipped, and so is a file that cannot be read (removed meanwhile,
    another user's), which is logged: one bad file does not hide every other's records."""
    for path in sorted((folder or usage_dir()).glob("*.jsonl")):
        if path == skip:
            continue
        try:
            if path.stat().st_mtime < since:  # last written before the period: nothing in it
                continue
            with path.open("rb") as lines:
                for line in lines:
                    try:
                        record = UsageRecord(**json.loads(line))
                    except (ValueError, TypeError):  # not JSON (cut short), not a record
                        continue
                    if record.at >= since:
                        yield record
        except OSError as exc:
            log.warning("cannot read the usage file %s (%s); its records are left out", path, exc)


def tokens_used_since(
    folder: Path | None, starts: Collection[datetime], skip: Path | None = None
) -> dict[datetime, dict[str, int]]:
    """Tokens per key name since each of ``starts`` (in every file but ``skip``), in one read:
    where a router's daily and monthly quotas start. What a key was charged counts (the
    engine's count, or the estimate without one)."""
    return TokensUsedSince(folder, lambda: skip)(starts)


class TokensUsedSince:
    """What the other router processes' usage files say each key used since some moments: a
    router counts its own usage in memory (``router._limits``), so its own file is left out,
    or its records would count twice. ``own`` says which file that is, once it exists.

    Each file is read on from where the last read (for the same moments) stopped, so a read
    costs what was written since: the router reads every few seconds, and its quotas count
    what the other workers let a key use within seconds. One read at a time (a read of the
    new day may begin while the last one of the old day ends): they take turns."""

    def __init__(self, folder: Path | None, own: Callable[[], Path | None] = lambda: None) -> None:
        self.folder = folder
        self.own = own
        self.scans = 0
        self._starts: tuple[datetime, ...] = ()
        self._files: dict[Path, FileTotals] = {}
        self._unreadable: set[Path] = set()  # said once each, until read again
        self._turn = threading.Lock()

    def __call__(self, starts: Collection[datetime]) -> dict[datetime, dict[str, int]]:
        with self._turn:
            return self._read(starts)

    def _read(self, starts: Collection[datetime]) -> dict[datetime, dict[str, int]]:
        self.scans += 1
        wanted = tuple(sorted(set(starts)))
        if self._starts and max(wanted) < max(self._starts):
            # Older moments than the last read's (yesterday's read ending after today's began):
            # not what the router keeps, so answered empty rather than undo what was read.
            return {start: {} for start in wanted}
        if wanted != self._starts:  # a new day: every file from its beginning
            self._starts, self._files = wanted, {}
        skip, files = self.own(), {}
        for path in self._paths():
            if path == skip:
                continue
            files[path] = self._files.get(path) or FileTotals(wanted)
            try:
                files[path].read_on(path)
            except OSError as exc:  # what was read of it before still counts
                if path not in self._unreadable:
                    log.warning("cannot read the usage file %s (%s); what was read of it "
                                "before still counts", path, exc)  # fmt: skip
                self._unreadable.add(path)
            else:
                self._unreadable.discard(path)
        self._files = files  # a file removed is no longer counted
        totals: dict[datetime, dict[str, int]] = {start: {} for start in wanted}
        for read in files.values():
            for start, per_key in read.totals.items():
                for key, tokens in per_key.items():
                    totals[start][key] = totals[start].get(key, 0) + tokens
        return totals

    def _paths(self) -> list[Path]:
        """The usage files, none for a folder not made yet; a folder that cannot be listed
        raises (``Path.glob`` would answer none, as if every file had gone)."""
        folder = self.folder or usage_dir()
        try:
            with os.scandir(folder) as entries:
                names = [entry.name for entry in entries]
        except FileNotFoundError:
            return []
        return [folder / name for name in sorted(names) if name.endswith(".jsonl")]


class FileTotals:
    """One usage file's tokens per key since each of ``starts``, as far as it has been read."""

    def __init__(self, starts: tuple[datetime, ...]) -> None:
        self.since = {start: start.timestamp() for start in starts}
        self.offset = 0  # bytes read: whole lines only
        self.totals: dict[datetime, dict[str, int]] = {start: {} for start in starts}

    def read_on(self, path: Path) -> None:
        """Adds the records written since the last read. A line not ended yet (being written,
        or cut short by a crash) is left to the next read; a record that is not one (cut
        short, then written over) is skipped."""
        status = path.stat()
        size = status.st_size
        if size < self.offset:  # written anew from its start: read so
            self.offset, self.totals = 0, {start: {} for start in self.since}
        if not self.offset and status.st_mtime < min(self.since.values(), default=0.0):
            self.offset = size  # last written before the earliest moment: nothing in it
        if size == self.offset:
            return
        with path.open("rb") as lines:
            lines.seek(self.offset)
            for line in lines:
                if not line.endswith(b"\n"):
                    break
                self.offset += len(line)
                try:
                    record = UsageRecord(**json.loads(line))
                except (ValueError, TypeError):  # not JSON, not a record
                    continue
                for start, moment in self.since.items():
                    if record.at >= moment:
                        per_key = self.totals[start]
                        per_key[record.key] = per_key.get(record.key, 0) + record.charged_tokens
