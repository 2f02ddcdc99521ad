"""Files that other processes, on other nodes, read while we write them.

A reader sees the old content, the new one, or none, never half of one: the text goes to a
temporary file beside the target, is flushed to disk, and is renamed into place; the folder is
synced too, so a crash cannot undo the rename or resurrect a removed file.

And the other way round: the last lines of a log another process writes, for an error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def remove_durably(path: Path) -> bool:
    """Removes ``path``; True if it was there."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive ``flock`` on ``path`` (created if missing), or
    None when another process holds it. The kernel drops the lock when the holder dies, which is
    why node-local leases (ports, cores) use it: a crashed launcher never leaks one."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block,
    waiting for it: for read-modify-write of a small shared file by several processes."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def tail(path: Path, lines: int, missing: str = "") -> str:
    """The last ``lines`` lines of the text file ``path`` (``missing`` if there is none): what
    an error message quotes of a log that a server or job writes. Bytes that are not UTF-8 are
    replaced, as a log may hold anything."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return missing
    return last_lines(text, lines)


def last_lines(text: str, lines: int) -> str:
    """The last ``lines`` lines of ``text``: the end of a tool's output is where it says what
    went wrong."""
    return "\n".join(text.splitlines()[-lines:])
