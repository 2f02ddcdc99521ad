"""``LocalCluster``: a real SLURM cluster on this machine, for users trying slurm-llm and for CI.

munge, a private MariaDB with slurmdbd (so ``sacct`` is real: submitit reads every job state
from it), slurmctld and several slurmd nodes with fake GPUs, all as background processes with pid
files under one directory. Package installs here do not start services (policy-rc.d), and there
is no systemd, so the cluster starts its daemons itself and stops only the ones it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from slurm_llm._errors import SlurmLLMError
from slurm_llm.cluster._config import ClusterConfig, default_root, render

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
COMMANDS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sinfo")
HOSTS = Path("/etc/hosts")
HOSTS_MARK = "# slurm-llm local cluster"


class ClusterError(SlurmLLMError, RuntimeError):
    """The local cluster could not be set up, started or stopped."""


@dataclass(frozen=True)
class Daemon:
    """One background process: its pid file and a word its command line must contain."""

    name: str
    pid_file: Path
    signature: str

    def pid(self) -> int | None:
        """The pid if the process running under it is really this daemon (pids get reused)."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if self.signature.encode() in cmdline else None


@dataclass(frozen=True)
class ClusterStatus:
    daemons: dict[str, int | None]
    nodes: dict[str, str]

    @property
    def running(self) -> bool:
        return bool(self.daemons) and all(pid is not None for pid in self.daemons.values())


class LocalCluster:
    def __init__(
        self,
        root: Path | None = None,
        nodes: int = 3,
        gpus_per_node: int = 4,
        cpus_per_node: int = 8,
    ) -> None:
        self.config = ClusterConfig(
            root=(root or default_root()).expanduser().resolve(),
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            cpus_per_node=cpus_per_node,
        )
        self.root = self.config.root

    # ---- the daemons ------------------------------------------------------------------------

    def daemons(self) -> list[Daemon]:
        """In start order; stopped in reverse."""
        run = self.root / "run"
        return [
            Daemon("munged", run / "munged.pid", "munged"),
            Daemon("mariadb", run / "mysqld.pid", "mariadbd"),
            Daemon("slurmdbd", run / "slurmdbd.pid", "slurmdbd"),
            Daemon("slurmctld", run / "slurmctld.pid", "slurmctld"),
            *(Daemon(f"slurmd {n}", run / f"slurmd-{n}.pid", "slurmd") for n in self.node_names),
        ]

    @property
    def node_names(self) -> list[str]:
        return self.config.node_names

    def env(self) -> dict[str, str]:
        """What SLURM's commands (and submitit, which calls them) need to find this cluster."""
        return {"SLURM_CONF": str(self.config.slurm_conf)}

    def status(self) -> ClusterStatus:
        daemons = {daemon.name: daemon.pid() for daemon in self.daemons()}
        nodes: dict[str, str] = {}
        if daemons.get("slurmctld"):
            out = self._run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False)
            for line in out.splitlines():
                name, _, state = line.partition(" ")
                nodes[name] = state
        return ClusterStatus(daemons, nodes)

    # ---- up ---------------------------------------------------------------------------------

    def up(self, clean: bool = False, timeout: float = 120.0) -> ClusterStatus:
        """Starts whatever is not running and waits until every node is idle; idempotent."""
        self._ensure_packages()
        if clean:
            self.down(clean=True)
        status = self.status()
        if status.running and all(s == "idle" for s in status.nodes.values()):
            return status
        self._prepare_files()
        self._add_hosts()
        self._start_munge()
        self._start_mariadb(timeout)
        self._start(self.daemons()[2], ["slurmdbd"])
        self._wait_port(self.config.dbd_port, "slurmdbd", timeout)
        self._start(self.daemons()[3], ["slurmctld"])
        self._wait_port(self.config.ctld_port, "slurmctld", timeout)
        for daemon, node in zip(self.daemons()[4:], self.node_names, strict=True):
            # Its own UTS namespace, so jobs on node nX see hostname nX.
            self._start(daemon, ["unshare", "--uts", "sh", "-c",
                                 f"hostname {node} && exec slurmd -N {node}"])  # fmt: skip
        self.wait_idle(timeout)
        return self.status()

    def wait_idle(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        nodes: dict[str, str] = {}
        while time.monotonic() < deadline:
            nodes = self.status().nodes
            if len(nodes) == len(self.node_names) and all(s == "idle" for s in nodes.values()):
                return
            if any(s.startswith(("drain", "down")) for s in nodes.values()):
                # A node left down by an earlier run comes back once told to resume.
                down = [n for n, s in nodes.items() if s.startswith(("drain", "down"))]
                self._run(["scontrol", "update", f"nodename={','.join(down)}",
                           "state=resume"], check=False)  # fmt: skip
            time.sleep(0.3)
        raise ClusterError(
            f"nodes not idle after {timeout:.0f} s: {nodes or 'no answer from slurmctld'}\n"
            f"{self._log_tail('slurmctld.log')}"
        )

    def _ensure_packages(self) -> None:
        missing = [
            c for c in COMMANDS if shutil.which(c) is None and not Path(f"/usr/sbin/{c}").exists()
        ]
        if not missing:
            return
        command = "apt-get install -y --no-install-recommends " + " ".join(PACKAGES)
        if os.geteuid() != 0:
            raise ClusterError(
                f"SLURM's programs are missing ({', '.join(missing)}); install them as root: "
                f"apt-get update && {command}"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-qq"], [*command.split(), "-qq"]):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise ClusterError(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")

    def _prepare_files(self) -> None:
        for sub in ("etc", "run", "log", "state", "spool", "munge-key", "mysql"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged insists: its socket directory world-readable, its key directory private.
        (self.root / "munge").mkdir(mode=0o755, exist_ok=True)
        (self.root / "munge").chmod(0o755)
        (self.root / "munge-key").chmod(0o700)
        for node in self.node_names:
            (self.root / "spool" / node).mkdir(exist_ok=True)
            gpus = self.root / "gpus" / node
            gpus.mkdir(parents=True, exist_ok=True)
            for index in range(self.config.gpus_per_node):
                device = gpus / f"nvidia{index}"
                if not device.is_symlink():
                    device.symlink_to("/dev/null")  # a character device is all SLURM checks
        for name, text in render(self.config).items():
            path = self.config.etc / name
            path.write_text(text)
            path.chmod(0o600 if name == "slurmdbd.conf" else 0o644)  # slurmdbd demands 600

    def _start_munge(self) -> None:
        key = self.root / "munge-key" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        daemon = self.daemons()[0]
        if daemon.pid() is None:
            self._run([
                "munged", f"--socket={self.config.munge_socket}", f"--key-file={key}",
                f"--pid-file={daemon.pid_file}", f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munge-key' / 'munged.seed'}", "--force",
            ])  # fmt: skip

    def _start_mariadb(self, timeout: float) -> None:
        my_cnf = self.config.etc / "my.cnf"
        daemon = self.daemons()[1]
        if daemon.pid() is not None:
            return
        if not (self.root / "mysql" / "mysql").exists():
            self._run(["mariadb-install-db", f"--defaults-file={my_cnf}", "--user=root",
                       "--auth-root-authentication-method=normal", "--skip-test-db"])  # fmt: skip
        # mariadbd does not daemonize itself: a shell detaches it, like SLURM's own daemons.
        out = self.root / "log" / "mariadb.out"
        self._run(
            ["sh", "-c", f"setsid mariadbd --defaults-file={my_cnf} >>{out} 2>&1 </dev/null &"]
        )
        deadline = time.monotonic() + timeout
        sql = (
            "CREATE DATABASE IF NOT EXISTS slurm_acct_db; "
            "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; "
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
        )
        while True:
            done = subprocess.run(
                ["mariadb", f"--defaults-file={my_cnf}", "-e", sql],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"MariaDB did not start:\n{self._log_tail('mariadb.log')}")
            time.sleep(0.3)

    def _start(self, daemon: Daemon, argv: list[str]) -> None:
        if daemon.pid() is None:
            self._run(argv)  # SLURM's daemons fork into the background themselves

    def _wait_port(self, port: int, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as probe, contextlib.suppress(OSError):
                probe.settimeout(1)
                probe.connect(("127.0.0.1", port))
                return
            time.sleep(0.2)
        raise ClusterError(f"{name} does not listen on {port}:\n{self._log_tail(f'{name}.log')}")

    # ---- down -------------------------------------------------------------------------------

    def down(self, clean: bool = False, timeout: float = 15.0) -> None:
        """Stops the daemons this cluster started (none else); ``clean`` also wipes SLURM's
        state and the accounting database together, since job ids restart at 1 without state
        and old accounting rows would then describe the wrong jobs."""
        for daemon in reversed(self.daemons()):
            pid = daemon.pid()
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while daemon.pid() is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            if daemon.pid() is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._remove_hosts()
        if clean:
            for sub in ("state", "spool", "mysql", "run"):
                shutil.rmtree(self.root / sub, ignore_errors=True)

    # ---- /etc/hosts -------------------------------------------------------------------------

    def _add_hosts(self) -> None:
        """Node names must resolve: submitit's host lists and the launcher use them."""
        lines = [f"127.0.1.{i} {n} {HOSTS_MARK}" for i, n in enumerate(self.node_names, 1)]
        current = HOSTS.read_text().splitlines()
        kept = [line for line in current if not line.endswith(HOSTS_MARK)]
        if kept + lines != current:
            HOSTS.write_text("\n".join(kept + lines) + "\n")

    def _remove_hosts(self) -> None:
        current = HOSTS.read_text().splitlines()
        kept = [line for line in current if not line.endswith(HOSTS_MARK)]
        if kept != current:
            HOSTS.write_text("\n".join(kept) + "\n")

    # ---- helpers ----------------------------------------------------------------------------

    def _run(self, argv: list[str], check: bool = True) -> str:
        env = {**os.environ, **self.env()}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise ClusterError(
                f"{' '.join(argv[:2])} failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-2000:]}"
            )
        return done.stdout

    def _log_tail(self, name: str, lines: int = 20) -> str:
        path = self.root / "log" / name
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return f"({path} does not exist)"
