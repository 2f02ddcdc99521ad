"""``LocalCluster``: a real SLURM cluster on this machine, for users trying slurm-llm and for CI.

munge, a private MariaDB with slurmdbd (so ``sacct`` is real: submitit reads every job state
from it), slurmctld and several slurmd nodes with fake GPUs; state, logs and configuration all
under one directory. ``up`` and ``down`` are idempotent, so scripts and test sessions call them
without first asking what runs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from slurm_llm._polling import polling, wait_until
from slurm_llm.cluster import _hosts
from slurm_llm.cluster._config import ClusterConfig, default_root, render
from slurm_llm.cluster._daemons import (
    Daemon,
    descendants,
    log_tail,
    start,
    step_daemons,
    stop,
    terminate,
)
from slurm_llm.cluster._errors import ClusterError
from slurm_llm.cluster._packages import ensure_installed

# Node states (sinfo %T) in which a node takes jobs. A trailing "*" means not responding.
USABLE = {"idle", "mixed", "allocated", "completing"}
# Wiped by `clean`: SLURM's state and the accounting database go together, because job ids
# restart at 1 without the state, and old accounting rows would then describe the wrong jobs.
WIPED = ("state", "spool", "mysql", "log", "run")
ACCOUNTING_SQL = (
    "CREATE DATABASE IF NOT EXISTS slurm_acct_db; "
    "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; "
    "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
)
# Each slurmd in a UTS namespace of its own, so that jobs on node nX see `hostname` = nX.
SLURMD_AS_NODE = 'hostname "$0" && exec slurmd -N "$0"'
# A daemon that has not written its pid file this long after its start command has died.
START_GRACE_S = 5.0


@dataclass(frozen=True)
class ClusterStatus:
    daemons: dict[str, int | None]  # name -> pid, None when not running
    nodes: dict[str, str]  # node -> state as sinfo prints it; empty without slurmctld

    @property
    def running(self) -> bool:
        return all(pid is not None for pid in self.daemons.values())

    @property
    def stopped(self) -> bool:
        return all(pid is None for pid in self.daemons.values())

    @property
    def ready(self) -> bool:
        """Every daemon runs and every node takes jobs."""
        return self.running and bool(self.nodes) and all(s in USABLE for s in self.nodes.values())


class LocalCluster:
    """One cluster, in ``root`` (default ``$SLURM_LLM_CLUSTER_DIR`` or ``~/.slurm-llm/cluster``).

    Options left as None take the values of the last ``up`` in ``root`` (else the defaults:
    3 nodes of 4 GPUs and 8 CPUs), so a later ``LocalCluster(root).down()`` finds every node.
    """

    def __init__(
        self,
        root: Path | None = None,
        nodes: int | None = None,
        gpus_per_node: int | None = None,
        cpus_per_node: int | None = None,
        memory_mb: int | None = None,
        base_port: int | None = None,
    ) -> None:
        root = Path(root or default_root()).expanduser().resolve()
        self._saved = ClusterConfig(root).with_saved_shape()
        self.config = self._saved.with_saved_shape(
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            cpus_per_node=cpus_per_node,
            memory_mb=memory_mb,
            base_port=base_port,
        )
        self.root = root

    def env(self) -> dict[str, str]:
        """What SLURM's commands (and submitit, which calls them) need to find this cluster."""
        return {"SLURM_CONF": str(self.config.slurm_conf)}

    # ---- what runs --------------------------------------------------------------------------

    def _daemons(self, config: ClusterConfig) -> list[Daemon]:
        """In start order."""
        run = config.root / "run"
        conf = f"SLURM_CONF={config.slurm_conf}"
        return [
            Daemon("munged", run / "munged.pid", "munged", (f"--socket={config.munge_socket}",)),
            Daemon(
                "mariadb", run / "mysqld.pid", "mariadbd", (f"--defaults-file={config.my_cnf}",)
            ),
            Daemon("slurmdbd", run / "slurmdbd.pid", "slurmdbd", (conf,)),
            Daemon("slurmctld", run / "slurmctld.pid", "slurmctld", (conf,)),
            *(
                Daemon(f"slurmd {node}", run / f"slurmd-{node}.pid", "slurmd", (conf, node))
                for node in config.node_names
            ),
        ]

    def _daemon(self, name: str) -> Daemon:
        return next(d for d in self._daemons(self.config) if d.name == name)

    def status(self) -> ClusterStatus:
        daemons = {daemon.name: daemon.pid() for daemon in self._daemons(self.config)}
        return ClusterStatus(daemons, self._node_states() if daemons["slurmctld"] else {})

    def _node_states(self) -> dict[str, str]:
        # A node in two partitions is listed twice, with the same state.
        out = self._ask(["sinfo", "--noheader", "--Node", "--format=%N %T"])
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def _registered_since(self, since: float) -> set[str]:
        out = self._ask(["scontrol", "show", "nodes", "--oneliner"])
        # SlurmdStartTime: whole seconds, local time; "None" if the node never registered.
        found = re.findall(
            r"^NodeName=(\S+) .*\bSlurmdStartTime=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", out, re.M
        )
        return {
            name
            for name, at in found
            if datetime.strptime(at, "%Y-%m-%dT%H:%M:%S").timestamp() >= int(since)
        }

    def _jobs(self) -> list[str]:
        return self._ask(["squeue", "--noheader", "--format=%A"]).split()

    # ---- up ---------------------------------------------------------------------------------

    def up(self, clean: bool = False, timeout: float = 120.0) -> None:
        """Starts whatever is not running and waits until the nodes take jobs.

        On a running cluster this only checks it, so scripts and test sessions call it freely.
        ``clean`` first stops the cluster and wipes its state and accounting. The nodes are
        waited for until idle, or only until they take jobs when the queue already has some
        (jobs that a killed, rather than stopped, cluster kept in its saved state).
        """
        ensure_installed()
        if os.geteuid() != 0:
            raise ClusterError(
                "the local cluster runs as root (its slurmd start jobs as any user, and it adds "
                "its node names to /etc/hosts): run `slurm-llm cluster up` as root"
            )
        if clean:
            self.down(clean=True)
        elif self.status().ready and self.config == self._saved:
            return
        if not self.status().stopped and self.config != self._saved:
            running, wanted = self._saved.shape(), self.config.shape()
            changed = [name for name in wanted if wanted[name] != running[name]]
            raise ClusterError(
                f"the cluster in {self.root} runs with "
                f"{', '.join(f'{name}={running[name]}' for name in changed)}, not "
                f"{', '.join(f'{name}={wanted[name]}' for name in changed)}: stop it first "
                f"(slurm-llm cluster down --dir {self.root})"
            )
        self._check_ports_free()
        try:
            self._start_all(timeout)
        except ClusterError as error:
            raise ClusterError(
                f"{error}\nWhat did start still runs, to be inspected; stop it with: "
                f"slurm-llm cluster down --dir {self.root}"
            ) from error

    def _start_all(self, timeout: float) -> None:
        self._prepare_files()
        _hosts.add(self.root, self.config.node_names)
        self._start_munge()
        self._start_mariadb(timeout)
        self._start_daemon("slurmdbd", ["slurmdbd"], self.config.dbd_port, timeout)
        self._start_daemon("slurmctld", ["slurmctld"], self.config.ctld_port, timeout)
        since = time.time()
        fresh = [n for n in self.config.node_names if self._daemon(f"slurmd {n}").pid() is None]
        own_hostname = _uts_namespaces_work()
        for node in fresh:
            argv = ["slurmd", "-N", node]
            if own_hostname:
                argv = ["unshare", "--uts", "sh", "-c", SLURMD_AS_NODE, node]
            self._start_daemon(f"slurmd {node}", argv, None, timeout)  # waited for below
        # A restarted slurmctld shows the node states it saved until the nodes register anew.
        self._wait_nodes(USABLE if self._jobs() else {"idle"}, timeout, fresh, since)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until every node is idle: no job left running anywhere."""
        self._wait_nodes({"idle"}, timeout)

    def _wait_nodes(
        self, wanted: set[str], timeout: float, fresh: Iterable[str] = (), since: float = 0.0
    ) -> None:
        """Until every node is in a ``wanted`` state and those in ``fresh`` have registered
        with slurmctld ``since`` then."""
        started = time.monotonic()
        resumed: set[str] = set()
        nodes: dict[str, str] = {}
        for _ in polling(timeout, every=0.2):
            nodes = self._node_states()
            if (
                set(nodes) == set(self.config.node_names)
                and set(nodes.values()) <= wanted
                and set(fresh) <= self._registered_since(since)
            ):
                return
            # A drained node (say, a job's processes outlived a kill) stays drained across
            # restarts; resume it once. Drained again means a real problem: report it.
            drained = {n for n, state in nodes.items() if state.startswith("drain")}
            if drained & resumed:
                break
            if drained:
                self._ask(["scontrol", "update", f"NodeName={','.join(drained)}",
                             "State=RESUME"])  # fmt: skip
                resumed |= drained
            for daemon in self._daemons(self.config):
                if time.monotonic() - started > START_GRACE_S and daemon.pid() is None:
                    raise ClusterError(f"{daemon.name} stopped:\n{self._log_of(daemon.name)}")
        reasons = self._ask(["sinfo", "--noheader", "--list-reasons"]).strip()
        bad = [n for n, s in nodes.items() if s not in wanted] or self.config.node_names
        raise ClusterError(
            f"nodes not {'/'.join(sorted(wanted))} after {timeout:.0f} s: "
            f"{nodes or 'slurmctld does not answer'}\n{reasons}\n"
            f"{self._log_of('slurmctld')}\n{self._log_of(f'slurmd {bad[0]}')}"
        )

    def _prepare_files(self) -> None:
        config = self.config
        for sub in ("etc", "run", "log", "state", "mysql"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged insists: its socket directory world-readable, its key directory private.
        for sub, mode in (("munge", 0o755), ("munge-key", 0o700)):
            (self.root / sub).mkdir(exist_ok=True)
            (self.root / sub).chmod(mode)
        for node in config.node_names:
            (self.root / "spool" / node).mkdir(parents=True, exist_ok=True)
            for device in config.gpu_devices(node):
                device.parent.mkdir(parents=True, exist_ok=True)
                if not device.is_symlink():
                    device.symlink_to("/dev/null")  # a character device is all SLURM checks
        for name, text in render(config).items():
            path = config.etc / name
            path.write_text(text)
            path.chmod(0o600 if name == "slurmdbd.conf" else 0o644)  # slurmdbd demands 600
        config.save_shape()
        self._saved = config

    def _start_munge(self) -> None:
        key = self.root / "munge-key" / "munge.key"
        if not key.exists():  # once: jobs' credentials stay valid across restarts
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        daemon = self._daemon("munged")
        if daemon.pid() is None:
            # A socket left by a killed munged would pass for the new one's.
            self.config.munge_socket.unlink(missing_ok=True)
            self._start(
                "munged",
                ["munged", f"--socket={self.config.munge_socket}", f"--key-file={key}",
                 f"--pid-file={daemon.pid_file}", f"--log-file={self.root / 'log/munged.log'}",
                 f"--seed-file={self.root / 'munge-key/munged.seed'}", "--force"],
            )  # fmt: skip
        self._wait("munged", self.config.munge_socket.exists, 10.0)

    def _start_mariadb(self, timeout: float) -> None:
        my_cnf = f"--defaults-file={self.config.my_cnf}"
        if self._daemon("mariadb").pid() is None:
            if not (self.root / "mysql" / "mysql").exists():  # an empty datadir: initialise once
                self._run(["mariadb-install-db", my_cnf, "--user=root", "--skip-test-db",
                           "--auth-root-authentication-method=normal"])  # fmt: skip
            self._start("mariadb", ["mariadbd", my_cnf], detach=True)

        def accounting_db_exists() -> bool:
            argv = ["mariadb", my_cnf, "-e", ACCOUNTING_SQL]
            return subprocess.run(argv, capture_output=True, check=False).returncode == 0

        self._wait("mariadb", accounting_db_exists, timeout)

    def _start_daemon(self, name: str, argv: list[str], port: int | None, timeout: float) -> None:
        """Starts it unless it runs; with a ``port``, waits until it listens there."""
        if self._daemon(name).pid() is not None:
            return
        self._start(name, argv)
        if port is not None:
            self._wait(name, lambda: _listens(port), timeout)

    def _start(self, name: str, argv: list[str], detach: bool = False) -> None:
        code = start(argv, self._printed(name), self._env(), detach)
        if code != 0:
            raise ClusterError(f"{name} failed to start (exit {code}):\n{self._log_of(name)}")

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float) -> None:
        """Until ``ready``; fails early, with its log, if the daemon died."""
        started = time.monotonic()
        while not ready():
            waited = time.monotonic() - started
            died = waited > START_GRACE_S and self._daemon(name).pid() is None
            if died or waited > timeout:
                state = "stopped" if died else f"not ready after {timeout:.0f} s"
                raise ClusterError(f"{name} {state}:\n{self._log_of(name)}")
            time.sleep(0.05)

    def _check_ports_free(self) -> None:
        """Before anything starts: a port taken (by another local cluster, most likely) would
        otherwise show only as a daemon that dies, or as a wrong daemon answering."""
        config = self.config
        ports = {"mariadb": config.mysql_port, "slurmdbd": config.dbd_port,
                 "slurmctld": config.ctld_port,
                 **{f"slurmd {n}": p for n, p in zip(config.node_names, config.node_ports,
                                                      strict=True)}}  # fmt: skip
        taken = [
            f"{port} ({name})"
            for name, port in ports.items()
            if self._daemon(name).pid() is None and _listens(port)
        ]
        if taken:
            raise ClusterError(
                f"the cluster in {self.root} needs ports that are taken: {', '.join(taken)}. "
                "Stop what uses them (another local cluster?), or choose another --base-port"
            )

    # ---- down -------------------------------------------------------------------------------

    def down(self, clean: bool = False, timeout: float = 15.0) -> None:
        """Stops what this cluster started, jobs included, and nothing else.

        Jobs go too: without slurmd their step daemons would run on as orphans, and an engine
        server in one would hold its port. ``clean`` also wipes SLURM's state and the accounting
        database, together.
        """
        saved = self._saved  # what runs, whatever options this object was given
        munged, mariadb, slurmdbd, slurmctld, *slurmds = self._daemons(saved)
        if slurmctld.pid() is not None:
            self._cancel_jobs(timeout)
        stop(slurmds, timeout)
        if steps := step_daemons(saved.slurm_conf):  # what scancel could not end
            terminate(descendants(steps), 1.0, lambda: step_daemons(saved.slurm_conf))
        for daemon in (slurmctld, slurmdbd, mariadb, munged):
            stop([daemon], timeout)
        _hosts.remove(self.root)
        if clean:
            for sub in WIPED:
                shutil.rmtree(self.root / sub, ignore_errors=True)

    def _cancel_jobs(self, timeout: float) -> None:
        jobs = self._jobs()
        if not jobs:
            return
        self._ask(["scancel", "--full", *jobs])
        wait_until(lambda: not step_daemons(self.config.slurm_conf), timeout, every=0.1)

    # ---- helpers ----------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env()}

    def _run(self, argv: list[str]) -> str:
        done = subprocess.run(argv, env=self._env(), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ClusterError(
                f"{' '.join(argv[:2])} failed (exit {done.returncode}):\n"
                f"{(done.stderr or done.stdout).strip()[-2000:]}"
            )
        return done.stdout

    def _ask(self, argv: list[str]) -> str:
        """A SLURM client command whose failure means "nothing": no answer, no jobs."""
        try:
            done = subprocess.run(
                argv, env=self._env(), capture_output=True, text=True, check=False, timeout=30
            )
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout if done.returncode == 0 else ""

    def _printed(self, name: str) -> Path:
        """What the daemon's start command printed: errors from before it opened its log."""
        return self.root / "log" / f"{name.replace(' ', '-')}.out"

    def _log_of(self, name: str) -> str:
        log = self.root / "log"
        files = {
            "munged": log / "munged.log",
            "mariadb": log / "mariadb.log",
            "slurmdbd": log / "slurmdbd.log",
            "slurmctld": log / "slurmctld.log",
        }
        node = name.removeprefix("slurmd ")
        main = files.get(name, log / f"slurmd-{node}.log")
        printed = self._printed(name)
        if printed.exists() and printed.stat().st_size:
            return f"{log_tail(main)}\n{log_tail(printed)}"
        return log_tail(main)


@functools.cache
def _uts_namespaces_work() -> bool:
    """False in containers that forbid new namespaces (Docker's default): nodes then share the
    host's name, and only SLURMD_NODENAME tells them apart inside a job."""
    probe = ["unshare", "--uts", "hostname", "probe"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def _listens(port: int) -> bool:
    with socket.socket() as probe, contextlib.suppress(OSError):
        probe.settimeout(0.5)
        probe.connect(("127.0.0.1", port))
        return True
    return False
