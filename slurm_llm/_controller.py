"""The deployment controller: the one loop that keeps a deployment whole, wherever it runs.

It runs as a thread of the user's process (``Deployment.keep_alive()``, for notebooks), as a
detached process on this machine, or as a small SLURM job of its own (``controller_job``), so
that replacement, requeue handling and the wall-time handover go on after the user logs out.

Exactly one controller reconciles a deployment at a time: each holds ``controller.lock`` for as
long as it acts, and any other waits as a standby (a notebook's thread while a controller job
runs, or a successor job during a handover). The holder writes ``controller.json`` after every
pass, so ``status`` can say which controller runs and when it last reconciled, and can tell a
dead controller from a live one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Literal, Protocol

import submitit
from pydantic import BaseModel, ValidationError

from slurm_llm._errors import DeploymentError
from slurm_llm._executors import (
    ExecutorKind,
    make_executor,
    sbatch_parameters,
    time_limit_min,
)
from slurm_llm._files import remove_durably, write_atomic
from slurm_llm._launcher import job_deadline
from slurm_llm._paths import home_dir
from slurm_llm._registry import pid_alive
from slurm_llm._spec import ModelSpec

ControllerKind = Literal["thread", "process", "job"]
# A controller that has not reconciled for this long (or this many intervals) is dead.
STALE_AFTER_S = 30.0
STALE_AFTER_INTERVALS = 5


class ControllerRecord(BaseModel):
    """``controller.json``: who keeps the deployment whole, and when it last did."""

    deployment: str
    kind: ControllerKind
    host: str
    pid: int
    job_id: str | None = None
    started: float
    last_reconcile: float
    interval: float
    deadline: float | None = None  # the controller job's own wall-time end
    successor: str | None = None  # its successor job during a handover
    log_path: str | None = None

    def dead_reason(self, now: float | None = None) -> str | None:
        """Why this controller no longer keeps its deployment whole, or None while it does."""
        now = time.time() if now is None else now
        if self.host == socket.gethostname() and not pid_alive(self.pid):
            return f"its process {self.pid} on {self.host} is gone"
        silent = now - self.last_reconcile
        if silent > max(STALE_AFTER_S, STALE_AFTER_INTERVALS * self.interval):
            return f"it has not reconciled for {silent:.0f} s"
        return None

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        where = f"job {self.job_id}" if self.job_id else f"pid {self.pid}"
        text = (
            f"{self.kind} ({where} on {self.host}), last reconcile "
            f"{now - self.last_reconcile:.0f} s ago"
        )
        if self.successor:
            text += f", handing over to job {self.successor}"
        return text


class Reconciled(Protocol):
    """What a controller needs of a deployment."""

    name: str
    kind: ExecutorKind

    @property
    def spec(self) -> ModelSpec: ...

    def folder(self) -> Path: ...

    def exists(self) -> bool: ...

    def reconcile(self) -> list[str]: ...

    def record_events(self, texts: list[str]) -> None: ...


def record_path(folder: Path) -> Path:
    return folder / "controller.json"


def waiting_path(folder: Path) -> Path:
    """Where a standby controller says it waits for the lock (a successor job, say)."""
    return folder / "controller.waiting"


def read_record(folder: Path) -> ControllerRecord | None:
    try:
        return ControllerRecord.model_validate_json(record_path(folder).read_text())
    except (FileNotFoundError, ValidationError):
        return None


@contextlib.contextmanager
def controller_lock(folder: Path) -> Iterator[Callable[[], bool]]:
    """A ``try_take()`` that takes the deployment's controller lock without waiting; the lock
    is held until the context ends (or the process dies, which the kernel notices)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "controller.lock", os.O_RDWR | os.O_CREAT, 0o644)
    held = False

    def try_take() -> bool:
        nonlocal held
        if not held:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except BlockingIOError:
                pass
        return held

    try:
        yield try_take
    finally:
        os.close(fd)  # releases the lock


class Controller:
    """One controller's life: wait to hold the lock, then reconcile every ``interval`` and
    write the record, until ``stop`` is set, the deployment is gone, or ``hand_over``
    says a successor has taken over."""

    def __init__(
        self,
        deployment: Reconciled,
        kind: ControllerKind,
        interval: float = 1.0,
        job_id: str | None = None,
        deadline: float | None = None,
        log_path: str | None = None,
    ) -> None:
        self.deployment = deployment
        self.folder = deployment.folder()
        now = time.time()
        self.record = ControllerRecord(
            deployment=deployment.name, kind=kind, host=socket.gethostname(), pid=os.getpid(),
            job_id=job_id, started=now, last_reconcile=now, interval=interval,
            deadline=deadline, log_path=log_path,
        )  # fmt: skip
        self.stop = threading.Event()

    def run(self, hand_over: Callable[[Controller], bool] | None = None) -> str:
        """Returns why it ended: "stopped", "deployment gone" or "handed over"."""
        announced = False
        with controller_lock(self.folder) as try_take:
            while not self.stop.is_set():
                if not self.deployment.exists():
                    return "deployment gone"
                if try_take():
                    if announced:  # a standby no more
                        remove_durably(waiting_path(self.folder))
                        announced = False
                    self._pass()
                    if hand_over is not None and hand_over(self):
                        return "handed over"
                elif not announced:
                    write_atomic(waiting_path(self.folder), self.record.model_dump_json())
                    announced = True
                self.stop.wait(self.record.interval)
        return "stopped"

    def successor_waits(self, job_id: str) -> bool:
        """Whether job ``job_id`` has started and waits for this controller's lock."""
        try:
            waiting = ControllerRecord.model_validate_json(waiting_path(self.folder).read_text())
        except (FileNotFoundError, ValidationError):
            return False
        return waiting.job_id == job_id

    def _pass(self) -> None:
        try:
            self.deployment.reconcile()
        except Exception as exc:  # keep the replicas alive through a transient error
            with contextlib.suppress(Exception):
                self.deployment.record_events([f"reconcile failed: {exc}"])
        self.publish(last_reconcile=time.time())

    def publish(self, **changes: object) -> None:
        """Writes the record (only while the deployment exists: never resurrect a stopped one)."""
        self.record = self.record.model_copy(update=changes)
        if self.deployment.exists():
            write_atomic(record_path(self.folder), self.record.model_dump_json())

    def withdraw(self) -> None:
        """Removes the record if it is still ours (a successor may have written its own)."""
        published = read_record(self.folder)
        if published is not None and published.pid == self.record.pid and (
            published.host == self.record.host
        ):
            remove_durably(record_path(self.folder))


def stop_controllers(folder: Path, timeout: float = 15.0) -> None:
    """Ends the deployment's controller (and a successor), wherever it runs, and waits until
    none holds the lock. Call it once the deployment's state is gone: controllers that are
    not reached by a signal then end on their next pass by themselves."""
    record = read_record(folder)
    if record is not None:
        for job_id in (record.job_id, record.successor):
            if record.kind == "job" and job_id:
                subprocess.run(["scancel", job_id], capture_output=True, check=False, timeout=30)
        if record.kind == "process" and record.host == socket.gethostname():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with controller_lock(folder) as try_take:
        while not try_take() and time.monotonic() < deadline:
            time.sleep(0.05)
    remove_durably(record_path(folder))
    remove_durably(waiting_path(folder))


class ControllerMain(submitit.helpers.Checkpointable):
    """The controller as a SLURM job: reconciles until the deployment stops, and hands itself
    over to a successor job ``handover_s`` before its own wall-time ends (as replicas do).

    ``attach`` finds the deployment by name in the job (``slurm_llm.attach``); it is passed in
    rather than imported so that this module does not depend on the deployment's.
    """

    def __init__(
        self,
        name: str,
        home: str,
        interval: float,
        attach: Callable[[str, Path], Reconciled | None],
    ) -> None:
        self.name = name
        self.home = home
        self.interval = interval
        self.attach = attach
        self._successor: str | None = None

    def __call__(self) -> str:
        deployment = self.attach(self.name, Path(self.home))
        if deployment is None:
            return "deployment gone"
        env = submitit.JobEnvironment()
        spec = deployment.spec
        controller = Controller(
            deployment, "job", self.interval, job_id=str(env.job_id),
            deadline=job_deadline(time.time(), spec), log_path=str(env.paths.stdout),
        )  # fmt: skip
        outcome = controller.run(lambda c: self._hand_over(c, spec))
        print(f"[slurm-llm] controller of {self.name}: {outcome}", flush=True)
        if outcome != "handed over":
            controller.withdraw()
        return outcome

    def _hand_over(self, controller: Controller, spec: ModelSpec) -> bool:
        deadline = controller.record.deadline
        if self._successor is None:
            if deadline is None or deadline - time.time() > spec.handover_s:
                return False
            self._successor = submit_controller_job(self, spec, controller.folder).job_id
            controller.publish(successor=self._successor)
            controller.deployment.record_events(
                [f"controller job {controller.record.job_id} ends in "
                 f"{deadline - time.time():.0f} s; successor controller job {self._successor}"]
            )  # fmt: skip
            return False
        return controller.successor_waits(self._successor)

    # submitit's stub says it returns a DelayedSubmission; None (no requeue) is documented too.
    def checkpoint(self) -> submitit.helpers.DelayedSubmission | None:  # type: ignore[override]
        """Preemption or wall-time: requeue, unless a successor job is already on its way."""
        if self._successor is not None:
            return None
        return submitit.helpers.DelayedSubmission(ControllerMain(
            self.name, self.home, self.interval, self.attach
        ))  # fmt: skip


def submit_controller_job(main: ControllerMain, spec: ModelSpec, folder: Path) -> submitit.Job[str]:
    """One small job (1 CPU, 1 GB) with the replicas' SLURM options and wall-time."""
    executor = make_executor("slurm", folder / "controller-jobs")
    executor.update_parameters(**sbatch_parameters(
        spec.slurm, f"slurm-llm-controller-{main.name}", time_min=time_limit_min(spec),
        cpus=1, mem_gb=1,
    ))  # fmt: skip
    try:
        job: submitit.Job[str] = executor.submit(main)
    except Exception as exc:
        raise DeploymentError(
            f"SLURM refused the controller job of {main.name!r}: {str(exc).strip()}"
        ) from None
    return job


def start_controller(
    deployment: Reconciled,
    home: Path | None,
    attach: Callable[[str, Path], Reconciled | None],
    interval: float = 1.0,
    timeout: float = 120.0,
) -> ControllerRecord:
    """Starts a controller that outlives the caller and returns once it has reconciled.

    On SLURM it is a job of its own; without SLURM, a process in a session of its own
    (``setsid``), so that closing the terminal or ending the SSH session does not end it.
    """
    folder = deployment.folder()
    asked = time.time()
    if deployment.kind == "slurm":
        main = ControllerMain(deployment.name, str(home_dir(home)), interval, attach)
        where = f"job {submit_controller_job(main, deployment.spec, folder).job_id}"
    else:
        log = folder / "controller.log"
        argv = [sys.executable, "-m", "slurm_llm", "controller", "run", deployment.name,
                "--interval", str(interval)]  # fmt: skip
        env = {**os.environ, "SLURM_LLM_HOME": str(home_dir(home))}
        with log.open("ab") as out:
            subprocess.run(["setsid", "--fork", *argv], stdin=subprocess.DEVNULL, stdout=out,
                           stderr=out, env=env, check=True)  # fmt: skip
        where = f"a process logging to {log}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = read_record(folder)
        if record is not None and record.started >= asked and record.dead_reason() is None:
            return record
        time.sleep(0.1)
    raise DeploymentError(
        f"the controller of {deployment.name!r} ({where}) did not reconcile within "
        f"{timeout:.0f} s; is it pending (squeue --me)? see its log in {folder}"
    )


def run_controller(deployment: Reconciled, interval: float = 1.0) -> str:
    """The detached process's loop (``slurm-llm controller run``): until SIGTERM or the
    deployment is gone."""
    log = deployment.folder() / "controller.log"
    controller = Controller(deployment, "process", interval, log_path=str(log))

    def stop(signum: int, frame: FrameType | None) -> None:
        controller.stop.set()

    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, stop)
    outcome = controller.run()
    controller.withdraw()
    return outcome
