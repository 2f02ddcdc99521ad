"""``deploy()`` and the ``Deployment`` handle: the researcher's view of a model's replicas.

A deployment is a name, a spec, and one submitit job per replica index. Its state (which job
serves which index) lives in a small JSON file beside the registry, so another process (the CLI,
a second notebook) can attach to it, show its status and stop it. Readiness is never guessed:
a replica is ready exactly when its launcher has published a live registry record.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import submitit
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from slurm_llm._errors import DeploymentError
from slurm_llm._executors import (
    ExecutorKind,
    detached_output,
    local_parameters,
    make_executor,
    resolve_kind,
    slurm_parameters,
)
from slurm_llm._launcher import ReplicaLauncher
from slurm_llm._paths import deployments_dir, registry_dir
from slurm_llm._registry import EndpointRecord, Registry, pid_alive
from slurm_llm._spec import ModelSpec

ReplicaState = Literal["pending", "starting", "ready", "failed", "stopped"]
LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica as the user should see it: its state and, if it failed, why and where."""

    replica: int
    job_id: str
    state: ReplicaState
    url: str | None = None
    node: str | None = None
    reason: str | None = None
    log_path: str | None = None


class ReplicaJob:
    """The job behind one replica index, whether this process submitted it or not."""

    def __init__(self, kind: ExecutorKind, folder: Path, job: submitit.Job[None]) -> None:
        self.kind = kind
        self.folder = folder
        self.job = job

    @classmethod
    def reattach(cls, kind: ExecutorKind, folder: Path, job_id: str) -> ReplicaJob:
        job_class = submitit.SlurmJob if kind == "slurm" else submitit.LocalJob
        return cls(kind, folder, job_class(folder=folder, job_id=job_id))

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)

    @property
    def log_path(self) -> Path:
        return Path(self.job.paths.stdout)

    def scheduler_state(self) -> str:
        """SLURM's state name; for local jobs RUNNING until the controller process is gone."""
        if self.kind == "slurm":
            return str(self.job.state)
        if (process := getattr(self.job, "_process", None)) is not None:
            return "RUNNING" if process.poll() is None else "FINISHED"
        return "RUNNING" if _local_controller_alive(self.job_id) else "FINISHED"

    def finished(self) -> bool:
        return self.scheduler_state() not in (
            "RUNNING",
            "PENDING",
            "REQUEUED",
            "CONFIGURING",
            "COMPLETING",
            "RESIZING",
            "SUSPENDED",
            "UNKNOWN",
        )

    def failure_reason(self) -> str:
        if self.job.paths.result_pickle.exists():
            with contextlib.suppress(Exception):
                error = self.job.exception()
                if error is not None:
                    return _job_error_message(str(error))
        return f"job ended ({self.scheduler_state()}); log tail:\n{self.log_tail()}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log yet)"
        return "\n".join(text.splitlines()[-lines:])

    def cancel(self) -> None:
        """scancel on SLURM. Locally SIGTERM, which submitit's controller forwards to the
        launcher (a clean stop), rather than submitit's SIGINT, which kills it after 1 s."""
        if self.kind == "slurm":
            self.job.cancel(check=False)
        elif (process := getattr(self.job, "_process", None)) is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        elif _local_controller_alive(self.job_id):
            os.kill(int(self.job_id), signal.SIGTERM)


class Deployment:
    """Replicas of one model: submit, wait until ready, inspect, scale, stop.

    Use it as a context manager so the replicas stop when the block ends.
    """

    def __init__(
        self,
        name: str,
        spec: ModelSpec,
        kind: ExecutorKind,
        jobs: dict[int, ReplicaJob],
        home: Path | None = None,
        owned: bool = True,
    ) -> None:
        self.name = name
        self.spec = spec
        self.kind = kind
        self.jobs = jobs
        self._home = home
        self._owned = owned
        self.registry = Registry(registry_dir(home))

    # ---- what clients need ------------------------------------------------------------------

    def records(self) -> list[EndpointRecord]:
        """Live records of this deployment's current jobs."""
        current = {index: job.job_id for index, job in self.jobs.items()}
        return [r for r in self.registry.records(self.name) if current.get(r.replica) == r.job_id]

    @property
    def endpoints(self) -> list[str]:
        """Base URLs of ready replicas (OpenAI API under ``/v1``)."""
        return [record.url for record in self.records()]

    # ---- lifecycle --------------------------------------------------------------------------

    def status(self) -> list[ReplicaStatus]:
        ready = {r.replica: r for r in self.records()}
        statuses = []
        for index, job in sorted(self.jobs.items()):
            record = ready.get(index)
            if record is not None:
                statuses.append(
                    ReplicaStatus(
                        index,
                        job.job_id,
                        "ready",
                        record.url,
                        record.node,
                        log_path=str(job.log_path),
                    )
                )
                continue
            state = job.scheduler_state()
            if state == "PENDING":
                statuses.append(
                    ReplicaStatus(index, job.job_id, "pending", log_path=str(job.log_path))
                )
            elif not job.finished():
                statuses.append(
                    ReplicaStatus(index, job.job_id, "starting", log_path=str(job.log_path))
                )
            elif state in ("CANCELLED", "INTERRUPTED") or state.startswith("CANCELLED"):
                statuses.append(
                    ReplicaStatus(
                        index, job.job_id, "stopped", reason=state, log_path=str(job.log_path)
                    )
                )
            else:
                statuses.append(
                    ReplicaStatus(
                        index,
                        job.job_id,
                        "failed",
                        reason=job.failure_reason(),
                        log_path=str(job.log_path),
                    )
                )
        return statuses

    def wait_ready(self, timeout: float | None = None, progress: bool = True) -> Deployment:
        """Blocks until every replica is ready; raises with reasons and logs if one fails."""
        deadline = None if timeout is None else time.monotonic() + timeout
        console = Console(stderr=True)
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} ready · {task.fields[detail]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=True, disable=not progress) as bar:
            task = bar.add_task(self.name, total=len(self.jobs), detail="submitted")
            while True:
                statuses = self.status()
                counts = {s: sum(1 for x in statuses if x.state == s) for s in _STATES}
                detail = ", ".join(f"{n} {s}" for s, n in counts.items() if n and s != "ready")
                bar.update(task, completed=counts["ready"], detail=detail or "all ready")
                broken = [s for s in statuses if s.state in ("failed", "stopped")]
                if broken:
                    raise DeploymentError(_describe_failures(self.name, broken))
                if counts["ready"] == len(statuses):
                    return self
                if deadline is not None and time.monotonic() > deadline:
                    waiting = ", ".join(str(s.log_path) for s in statuses if s.state != "ready")
                    raise DeploymentError(
                        f"deployment {self.name!r} not ready after {timeout:.0f} s: {detail}; "
                        f"logs: {waiting}"
                    )
                time.sleep(0.05)

    def scale(self, replicas: int) -> Deployment:
        """Adds replicas at new indices or stops the highest ones; does not wait for readiness."""
        if replicas < 0:
            raise DeploymentError(f"cannot scale {self.name!r} to {replicas} replicas")
        current = sorted(self.jobs)
        if replicas > len(current):
            start = current[-1] + 1 if current else 0
            self.jobs.update(
                _submit(
                    self.spec,
                    self.name,
                    self.kind,
                    range(start, start + replicas - len(current)),
                    self._home,
                )
            )
        else:
            doomed = {index: self.jobs.pop(index) for index in current[replicas:]}
            _stop_jobs(doomed.values())
            self._withdraw(doomed)
        self.spec = self.spec.with_overrides(replicas=replicas)
        _save_state(self)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Cancels every replica, waits for the jobs to end, and forgets the deployment."""
        jobs, self.jobs = dict(self.jobs), {}
        _stop_jobs(jobs.values(), timeout)
        self._withdraw(jobs)
        with contextlib.suppress(FileNotFoundError):
            _state_path(self.name, self._home).unlink()

    def _withdraw(self, jobs: dict[int, ReplicaJob]) -> None:
        """A launcher killed before its cleanup leaves a record; remove it for the client's sake."""
        for index, job in jobs.items():
            self.registry.withdraw(self.name, index, job.job_id)

    def detach(self) -> Deployment:
        """Leaves the replicas running after this handle's ``with`` block; ``attach()`` finds
        them again from any process."""
        self._owned = False
        return self

    def __enter__(self) -> Deployment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owned:
            self.stop()

    def __repr__(self) -> str:
        return f"Deployment({self.name!r}, replicas={len(self.jobs)}, executor={self.kind!r})"


def deploy(
    spec: ModelSpec,
    replicas: int | None = None,
    *,
    executor: str = "auto",
    name: str | None = None,
    home: str | Path | None = None,
    wait: bool = True,
    timeout: float | None = None,
    progress: bool = True,
) -> Deployment:
    """Submits ``replicas`` replicas of ``spec`` (SLURM if available, else this machine).

    If a deployment of the same name is already running (from any process), it is attached to
    and scaled to ``replicas`` instead of being doubled; its spec must match.
    """
    home_path = Path(home) if home is not None else None
    name = name or spec.name
    count = spec.replicas if replicas is None else replicas
    existing = attach(name, home_path, missing_ok=True)
    if existing is not None:
        if existing.spec.with_overrides(replicas=count) != spec.with_overrides(replicas=count):
            raise DeploymentError(
                f"a deployment named {name!r} is already running with a different spec; stop it "
                f"(slurm-llm down {name}) or deploy under another name"
            )
        deployment = existing.scale(count) if len(existing.jobs) != count else existing
    else:
        kind = resolve_kind(executor)
        spec = spec.with_overrides(replicas=count)
        jobs = _submit(spec, name, kind, range(count), home_path)
        deployment = Deployment(name, spec, kind, jobs, home_path)
        _save_state(deployment)
    if wait:
        try:
            deployment.wait_ready(timeout, progress)
        except BaseException:
            if deployment._owned:
                deployment.stop()
            raise
    return deployment


def attach(
    name: str, home: str | Path | None = None, missing_ok: bool = False
) -> Deployment | None:
    """The running deployment called ``name``, or None (``missing_ok``) / an error."""
    home_path = Path(home) if home is not None else None
    path = _state_path(name, home_path)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        if missing_ok:
            return None
        known = ", ".join(list_deployments(home_path)) or "none"
        raise DeploymentError(f"no deployment named {name!r} (running: {known})") from None
    kind: ExecutorKind = state["kind"]
    jobs = {
        int(index): ReplicaJob.reattach(kind, Path(entry["folder"]), entry["job_id"])
        for index, entry in state["jobs"].items()
    }
    deployment = Deployment(name, ModelSpec(**state["spec"]), kind, jobs, home_path, owned=False)
    if jobs and all(job.finished() for job in jobs.values()):
        path.unlink(missing_ok=True)  # every job is gone: nothing left to attach to
        if missing_ok:
            return None
        raise DeploymentError(f"deployment {name!r} has ended (all its jobs finished)")
    return deployment


def list_deployments(home: str | Path | None = None) -> list[str]:
    folder = deployments_dir(Path(home) if home is not None else None)
    return sorted(p.parent.name for p in folder.glob("*/state.json"))


_STATES: tuple[ReplicaState, ...] = ("pending", "starting", "ready", "failed", "stopped")


def _submit(
    spec: ModelSpec, name: str, kind: ExecutorKind, indices: Iterable[int], home: Path | None
) -> dict[int, ReplicaJob]:
    indices = list(indices)
    if not indices:
        return {}
    folder = (
        deployments_dir(home)
        / name
        / "jobs"
        / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    )
    launcher = ReplicaLauncher(spec.resolved(), name, registry_dir(home))
    executor = make_executor(kind, folder)
    if kind == "slurm":
        executor.update_parameters(**slurm_parameters(spec, f"slurm-llm-{name}"))
        jobs = executor.map_array(launcher, indices)
        return {
            index: ReplicaJob(kind, folder, job) for index, job in zip(indices, jobs, strict=True)
        }
    submitted = {}
    with detached_output(folder / "controllers.log"):
        for index in indices:  # one submission each: replicas must not share GPUs
            executor.update_parameters(**local_parameters(spec, index))
            submitted[index] = ReplicaJob(kind, folder, executor.submit(launcher, index))
    return submitted


def _stop_jobs(jobs: Iterable[ReplicaJob], timeout: float = 30.0) -> None:
    jobs = list(jobs)
    for job in jobs:
        job.cancel()
    deadline = time.monotonic() + timeout
    while any(not job.finished() for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.05)


def _state_path(name: str, home: Path | None) -> Path:
    return deployments_dir(home) / name / "state.json"


def _save_state(deployment: Deployment) -> None:
    path = _state_path(deployment.name, deployment._home)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "name": deployment.name,
        "kind": deployment.kind,
        "spec": deployment.spec.model_dump(mode="json"),
        "jobs": {
            str(index): {"job_id": job.job_id, "folder": str(job.folder)}
            for index, job in deployment.jobs.items()
        },
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def _local_controller_alive(pid: str) -> bool:
    """True while submitit's local controller with this pid runs (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False
    return b"submitit.local._local" in cmdline and pid_alive(int(pid))


def _job_error_message(text: str) -> str:
    """Our own error's message out of submitit's traceback text, else the traceback's tail."""
    start = text.rfind(_OWN_ERRORS)
    if start >= 0:
        message = text[start + len(_OWN_ERRORS) :].split("\n----------------------", maxsplit=1)[0]
        return message.strip()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-LOG_TAIL_LINES:]) if lines else text


_OWN_ERRORS = "slurm_llm._errors."


def _describe_failures(name: str, broken: list[ReplicaStatus]) -> str:
    parts = [f"deployment {name!r}: {len(broken)} replica(s) did not start"]
    for status in broken:
        parts.append(
            f"- replica {status.replica} (job {status.job_id}) {status.state}: {status.reason}\n"
            f"  log: {status.log_path}"
        )
    return "\n".join(parts)
