"""Each CPU replica on cores of its own, when nothing else keeps co-located replicas apart.

SLURM with cgroups or task/affinity already confines a job to the cores it was given. Without
them (the local executor, a cluster with TaskPlugin=task/none), every replica on a machine may
run on every core: two llama.cpp replicas then contend for the same caches, and two vLLM CPU
replicas bind their OpenMP threads to the same first cores ("auto" binding picks from the cores
a process may use), so a second replica adds almost nothing.

So a launcher leases cores the way it leases ports: an ``flock`` per core in the node's
temporary directory, held while it runs and dropped by the kernel when it dies. It confines
itself to the cores it got, and the engine inherits that. Where too few cores are free (more
replicas than cores), it leases none and shares them all, as before.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from slurm_llm._files import try_lock

LOCK_DIR = Path(tempfile.gettempdir()) / "slurm-llm-cores"


class CoreLease:
    """Cores this process keeps to until it exits (or ``release()``)."""

    def __init__(self, cores: list[int], fds: list[int]) -> None:
        self.cores = cores
        self._fds = fds

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def lease_cores(allowed: Sequence[int], cpus: int, lock_dir: Path = LOCK_DIR) -> CoreLease | None:
    """``cpus`` of the ``allowed`` cores that no other replica here holds, or None when the
    process may use no more than that anyway, or too few are free."""
    if cpus < 1 or len(allowed) <= cpus:
        return None
    lock_dir.mkdir(mode=0o1777, parents=True, exist_ok=True)
    cores: list[int] = []
    fds: list[int] = []
    for core in sorted(allowed):
        fd = try_lock(lock_dir / f"{core}.lock")
        if fd is None:
            continue
        cores.append(core)
        fds.append(fd)
        if len(cores) == cpus:
            return CoreLease(cores, fds)
    CoreLease(cores, fds).release()
    return None


def keep_to_own_cores(cpus: int) -> CoreLease | None:
    """Confines this process, and what it starts, to ``cpus`` leased cores (see above)."""
    lease = lease_cores(sorted(os.sched_getaffinity(0)), cpus)
    if lease is not None:
        os.sched_setaffinity(0, lease.cores)
    return lease
