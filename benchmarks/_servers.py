"""Server processes a benchmark starts: in use once they answer, stopped whatever happens."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from slurm_llm._polling import polling


def wait_until(
    ready: Callable[[], bool],
    what: str,
    process: subprocess.Popen[bytes],
    timeout: float,
    interval: float = 0.05,
) -> None:
    """Until ``ready()`` holds (an OSError counts as not yet); fails if ``process`` exits."""
    for _ in polling(timeout, interval):
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            if ready():
                return
        except OSError:
            pass
    raise RuntimeError(f"{what} was not ready within {timeout} s")


def answers(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        with urllib.request.urlopen(url, timeout=1):
            return True

    return ready


@contextmanager
def background(
    argv: list[str],
    ready: Callable[[], bool],
    log: Path,
    timeout: float = 20,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` running with its output appended to ``log``, once ``ready()``; stopped (and
    waited for) on the way out."""
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(ready, " ".join(argv[:3]), process, timeout)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
