"""Server processes a benchmark starts: in use once they answer, stopped whatever happens."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from slurm_llm._polling import polling
from slurm_llm.node._ports import lease_port


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


@contextmanager
def slurm_llm_router(
    options: list[str], log: Path, home: Path, timeout: float = 30
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``slurm-llm router OPTIONS`` (this checkout's) on a port leased for it, in ``home``;
    its URL and process once ``/health`` answers, stopped on the way out."""
    cli = Path(sys.executable).parent / "slurm-llm"
    argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "slurm_llm"]
    with lease_port("127.0.0.1") as lease:  # held until the router is gone: no one else takes it
        url = f"http://127.0.0.1:{lease.port}"
        argv += ["router", "--port", str(lease.port), *options]
        env = {**os.environ, "SLURM_LLM_HOME": str(home)}
        with background(argv, answers(f"{url}/health"), log, timeout, env) as process:
            yield url, process


def rss_mib(pid: int) -> float:
    """A process's resident memory (0 once it is gone)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Usage(NamedTuple):
    """What a process tree has used so far: CPU time, and how often its threads left a core,
    by waiting (nothing to do: a voluntary switch) or by being preempted (another process was
    given the core: an involuntary one). Preemptions per request tell processes crowding the
    cores apart from one doing more work per request."""

    cpu_s: float = 0.0
    waits: int = 0
    preemptions: int = 0

    def plus(self, other: Usage) -> Usage:
        return Usage(
            self.cpu_s + other.cpu_s, self.waits + other.waits, self.preemptions + other.preemptions
        )

    def since(self, earlier: Usage) -> Usage:
        return Usage(
            self.cpu_s - earlier.cpu_s,
            self.waits - earlier.waits,
            self.preemptions - earlier.preemptions,
        )


def usage(pid: int) -> Usage:
    """What a process and its living descendants have used so far: a supervisor with its
    workers, nginx's master with its worker (nothing for whatever is gone). A thread's context
    switches are its own, so a thread that ended between two readings takes its switches with
    it (the CPU time stays in the process's): the proxies' busy threads live as long as they do."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return Usage()
    total = Usage((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))  # utime, stime
    for task in tasks:
        try:
            waits, preemptions = switch_counts((task / "status").read_text())
            children = (task / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):  # a thread that has just ended
            continue
        total = total.plus(Usage(0.0, waits, preemptions))
        for child in children:
            total = total.plus(usage(int(child)))
    return total


def switch_counts(status: str) -> tuple[int, int]:
    """A thread's voluntary and involuntary context switches, from its ``/proc`` status."""
    counts = dict(line.split(":", 1) for line in status.splitlines() if "ctxt_switches" in line)
    return int(counts["voluntary_ctxt_switches"]), int(counts["nonvoluntary_ctxt_switches"])
