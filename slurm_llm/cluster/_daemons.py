"""Background processes that the local cluster starts, finds again and stops.

CI containers have no systemd, and package installs there do not start services (policy-rc.d),
so the cluster runs its daemons itself, with pid files under its own directory. A pid file can
outlive its process and the pid be reused by anything, and several clusters can share the host:
before a signal is sent, the process must prove it is that daemon of this cluster (its program
name plus an argument or environment entry that names this cluster's files).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from slurm_llm._files import last_lines
from slurm_llm._polling import wait_until


def _read_list(path: Path) -> list[str]:
    """A NUL-separated /proc file (cmdline, environ); empty for a zombie or a vanished pid."""
    try:
        return [item.decode(errors="replace") for item in path.read_bytes().split(b"\0") if item]
    except OSError:  # gone, or not ours to read
        return []


def _matches(pid: int, program: str, identity: Iterable[str]) -> bool:
    argv = _read_list(Path(f"/proc/{pid}/cmdline"))
    if not argv or os.path.basename(argv[0]) != program:
        return False
    known = set(argv) | set(_read_list(Path(f"/proc/{pid}/environ")))
    return all(item in known for item in identity)


@dataclass(frozen=True)
class Daemon:
    """One daemon of one cluster.

    ``identity``: strings each of which must be a whole argument or a whole environment entry
    of the process, e.g. ``SLURM_CONF=<this cluster's slurm.conf>`` or the node name.
    """

    name: str
    pid_file: Path
    program: str
    identity: tuple[str, ...]

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _matches(pid, self.program, self.identity) else None


def start(argv: list[str], output: Path, env: dict[str, str], detach: bool = False) -> int:
    """Runs a daemon's start command and returns its exit status. What the command prints goes
    to ``output``, never to a pipe: a daemon that kept a pipe open would hang its reader.

    SLURM's daemons and munged fork into the background themselves; ``detach`` does it for one
    that does not (mariadbd), so that it is not a child of this process, which would otherwise
    have to reap it.
    """
    if detach:
        argv = ["setsid", "--fork", *argv]
    with output.open("ab") as out:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, check=False
        )
    return done.returncode


def stop(daemons: Iterable[Daemon], timeout: float) -> None:
    """SIGTERM to all at once (so a stage costs its slowest daemon, not their sum), SIGKILL to
    those still running after ``timeout``."""
    running = {daemon: pid for daemon in daemons if (pid := daemon.pid()) is not None}
    terminate(running.values(), timeout, lambda: [p for d in running if (p := d.pid())])


def terminate(pids: Iterable[int], timeout: float, remaining: Callable[[], list[int]]) -> None:
    """SIGTERM to ``pids``; SIGKILL to what ``remaining`` still names after ``timeout``."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if wait_until(lambda: not remaining(), timeout, every=0.05):
        return
    for pid in remaining():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def step_daemons(slurm_conf: Path) -> list[int]:
    """This cluster's slurmstepd processes: each runs one job step, and outlives its slurmd."""
    marker = f"SLURM_CONF={slurm_conf}"
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _is_step_daemon(int(entry.name), marker)
    ]


def _is_step_daemon(pid: int, marker: str) -> bool:
    argv = _read_list(Path(f"/proc/{pid}/cmdline"))
    # slurmstepd renames itself ("slurmstepd: [12.batch]"), so match the start of its title.
    return (
        bool(argv)
        and argv[0].startswith("slurmstepd")
        and marker in _read_list(Path(f"/proc/{pid}/environ"))
    )


def descendants(pids: Iterable[int]) -> list[int]:
    """``pids`` and every process below them, found through /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The field after the parenthesised command name (which may hold spaces) is the state,
            # then the parent pid.
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return f"--- last lines of {path} ---\n" + last_lines(text, lines)
