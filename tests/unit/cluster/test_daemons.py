"""The cluster stops only what it started: pid files are checked against /proc, and /etc/hosts
keeps every line that is not its own."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_llm.cluster import _hosts
from slurm_llm.cluster._daemons import Daemon, descendants, stop


def wait_for_program(pid: int, program: str) -> None:
    """Until the process runs ``program``: its /proc entry can show the parent's for a moment."""
    for _ in range(500):
        if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(program.encode()):
            return
        time.sleep(0.01)
    raise AssertionError(f"{pid} never ran {program}")


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in daemon: ``sleep`` with an identifying argument and environment entry."""
    process = subprocess.Popen(["sleep", "60"], env={"SLURM_CONF": str(tmp_path / "slurm.conf")})
    wait_for_program(process.pid, "sleep")
    (tmp_path / "sleep.pid").write_text(f"{process.pid}\n")
    yield process
    process.kill()
    process.wait()


def test_a_pid_counts_only_when_the_process_is_that_daemon_of_this_cluster(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    pid_file = tmp_path / "sleep.pid"
    ours = f"SLURM_CONF={tmp_path / 'slurm.conf'}"
    assert Daemon("d", pid_file, "sleep", (ours, "60")).pid() == sleeper.pid
    assert Daemon("d", pid_file, "slurmd", (ours,)).pid() is None  # another program
    assert Daemon("d", pid_file, "sleep", ("SLURM_CONF=/elsewhere",)).pid() is None
    assert Daemon("d", tmp_path / "missing.pid", "sleep", ()).pid() is None


def test_a_stale_pid_file_names_no_process(tmp_path: Path) -> None:
    (tmp_path / "old.pid").write_text("999999999\n")
    assert Daemon("d", tmp_path / "old.pid", "true", ()).pid() is None


def test_stop_ends_the_daemon(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    daemon = Daemon("d", tmp_path / "sleep.pid", "sleep", ())
    stop([daemon], timeout=5)
    assert sleeper.wait(timeout=5) != 0


def test_descendants_follow_parent_links() -> None:
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])
    try:
        for _ in range(100):
            found = descendants([shell.pid])
            if len(found) == 2:
                break
            time.sleep(0.02)
        assert found[0] == shell.pid
        assert len(found) == 2
    finally:
        for pid in reversed(descendants([shell.pid])):
            subprocess.run(["kill", "-9", str(pid)], check=False)
        shell.wait()


def test_hosts_lines_are_added_and_removed_per_cluster(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n10.0.0.1 n1 # the site's own\n")
    _hosts.add(Path("/a"), ["n1", "n2"], hosts)
    _hosts.add(Path("/b"), ["n1"], hosts)
    _hosts.add(Path("/a"), ["n1", "n2"], hosts)  # again: no duplicates
    assert hosts.read_text().splitlines() == [
        "127.0.0.1 localhost",
        "10.0.0.1 n1 # the site's own",
        "127.0.1.1 n1 # slurm-llm local cluster /b",
        "127.0.1.1 n1 # slurm-llm local cluster /a",
        "127.0.1.2 n2 # slurm-llm local cluster /a",
    ]
    _hosts.remove(Path("/a"), hosts)
    _hosts.remove(Path("/b"), hosts)
    assert hosts.read_text() == "127.0.0.1 localhost\n10.0.0.1 n1 # the site's own\n"
