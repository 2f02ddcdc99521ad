"""The endpoint registry: one JSON record per ready replica, on a filesystem every node shares.

This is the paper's "hosts file", made safe: a record is written to a temporary file and renamed
into place, so a reader sees the old record, the new one, or none, never half of one. A record can
outlive its replica (a node dies, a job is killed with SIGKILL), so readers judge staleness from a
heartbeat the launcher refreshes, the launcher's pid when it runs on the reader's host, and the
job's wall-time deadline.

A replica being scaled down is first drained: its deployment's controller puts a marker file
beside its record (``<replica>-<job>.drain``), readers see the record with ``draining`` set, and
routers send it no new request while those in flight finish. The marker is a file of its own
because the launcher rewrites the whole record every few seconds and would erase a field.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from slurm_llm._files import remove_durably, write_atomic

HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TIMEOUT_S = 30.0


class EndpointRecord(BaseModel):
    """One ready replica: where it answers, what it serves, and which job owns it."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    replica: int
    model: str
    engine: str
    url: str
    node: str
    job_id: str
    launcher_pid: int
    engine_pid: int
    gpus: list[str]
    started: float
    ready: float
    heartbeat: float
    deadline: float | None = None
    log_path: str | None = None
    # Sequences the engine batches at once; the router sends no more than this and queues the
    # rest itself, so a waiting request goes to whichever replica frees up first.
    slots: int | None = None
    context: int | None = None  # tokens one request may use, prompt and answer together
    # The engine orders its queue by each request's ``priority`` (vLLM's priority scheduling),
    # so the router passes the caller's class on.
    request_priority: bool = False
    # Set by readers from the drain marker, never by the launcher: finish, take nothing new.
    draining: bool = False


class Registry:
    """Records under ``root/<deployment>/<replica>-<job>.json``.

    Keyed by job as well as replica index because two jobs serve one index during a wall-time
    handover: the successor publishes before its predecessor withdraws.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_for(self, deployment: str, replica: int, job_id: str) -> Path:
        return self.root / deployment / f"{replica}-{job_id}.json"

    def publish(self, record: EndpointRecord) -> None:
        path = self.path_for(record.deployment, record.replica, record.job_id)
        write_atomic(path, record.model_dump_json())

    def drain_path(self, deployment: str, replica: int, job_id: str) -> Path:
        return self.path_for(deployment, replica, job_id).with_suffix(".drain")

    def drain(self, deployment: str, replica: int, job_id: str, draining: bool = True) -> None:
        """Marks the replica as draining (routers stop sending it requests), or no longer."""
        path = self.drain_path(deployment, replica, job_id)
        if draining:
            write_atomic(path, "")
        else:
            remove_durably(path)

    def withdraw(self, deployment: str, replica: int, job_id: str) -> bool:
        """Removes the record ``job_id`` published for ``replica`` (and its drain marker); True
        if there was one."""
        remove_durably(self.drain_path(deployment, replica, job_id))
        return remove_durably(self.path_for(deployment, replica, job_id))

    def all_records(self, deployment: str | None = None) -> list[EndpointRecord]:
        """Every readable record, stale ones included, ordered by deployment and replica."""
        folders = [self.root / deployment] if deployment else sorted(self.root.glob("*"))
        found = [_read(path) for folder in folders for path in _record_files(folder)]
        return sorted(
            (record for record in found if record is not None),
            key=lambda r: (r.deployment, r.replica, r.ready),
        )

    def records(self, deployment: str | None = None) -> list[EndpointRecord]:
        """Records that are not stale: what clients and routers should use."""
        now = time.time()
        return [r for r in self.all_records(deployment) if stale_reason(r, now) is None]


def stale_reason(record: EndpointRecord, now: float | None = None) -> str | None:
    """Why a record must not be trusted any more, or None while it is live."""
    now = time.time() if now is None else now
    if now - record.heartbeat > HEARTBEAT_TIMEOUT_S:
        return f"no heartbeat for {now - record.heartbeat:.0f} s"
    if record.deadline is not None and now > record.deadline:
        return "the job's wall-time deadline has passed"
    if record.node == socket.gethostname() and not pid_alive(record.launcher_pid):
        return f"launcher process {record.launcher_pid} is gone"
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _record_files(folder: Path) -> Iterator[Path]:
    if folder.is_dir():
        yield from sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))


def _read(path: Path) -> EndpointRecord | None:
    try:
        record = EndpointRecord.model_validate_json(path.read_bytes())
    except (FileNotFoundError, ValidationError):
        return None
    if path.with_suffix(".drain").exists():
        return record.model_copy(update={"draining": True})
    return record
