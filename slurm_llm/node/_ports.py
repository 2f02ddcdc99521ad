"""Free ports that no other replica on the node can take at the same time.

"Bind to port 0 and close" races: two replicas starting together on one node can be handed the
same port before either engine binds it. Each launcher therefore holds an ``flock`` on a per-port
file in the node's temporary directory for as long as its engine runs; a port is taken only if
its lock is free and nothing is listening on it. The kernel drops the lock when the launcher dies,
so a crashed replica never leaks a port.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import tempfile
from pathlib import Path

from slurm_llm._errors import EngineError
from slurm_llm._files import try_lock

PORT_RANGE = (20000, 40000)
LOCK_DIR = Path(tempfile.gettempdir()) / "slurm-llm-ports"


class PortLease:
    """A port this process may give to its engine until ``release()``."""

    def __init__(self, port: int, fd: int) -> None:
        self.port = port
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PortLease:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def lease_port(
    host: str, port_range: tuple[int, int] = PORT_RANGE, lock_dir: Path = LOCK_DIR
) -> PortLease:
    lock_dir.mkdir(mode=0o1777, parents=True, exist_ok=True)
    candidates = list(range(*port_range))
    random.shuffle(candidates)
    for port in candidates[:500]:
        fd = try_lock(lock_dir / f"{port}.lock")
        if fd is None:
            continue
        if _bindable(host, port):
            return PortLease(port, fd)
        os.close(fd)
    raise EngineError(f"no free port on {host} in {port_range[0]}-{port_range[1]} after 500 tries")


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True
