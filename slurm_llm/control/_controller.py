"""The deployment controller: the one loop that keeps a deployment whole, wherever it runs.

It runs as a thread of the user's process (``Deployment.keep_alive()``, for notebooks), as a
detached process on this machine, or as a small SLURM job of its own (``ControllerMain``), so
that replacement, requeue handling and the wall-time handover go on after the user logs out.

Exactly one controller reconciles a deployment at a time: each holds ``controller.lock`` for as
long as it acts, and any other waits as a standby (a notebook's thread while a controller job
runs, or the successor job of a handover). The holder writes ``controller.json`` after every
pass, so ``status`` can say which controller runs and when it last reconciled, and can tell a
dead controller from a live one. The lock is ``flock``, so the filesystem under ``<home>``
must honour it across nodes (NFS and Lustre do unless mounted with node-local locks).
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
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Literal, Protocol

import submitit
from pydantic import BaseModel, ValidationError

from slurm_llm._errors import DeploymentError
from slurm_llm._files import remove_durably, write_atomic
from slurm_llm._paths import home_dir
from slurm_llm._polling import polling, wait_until
from slurm_llm._registry import pid_alive
from slurm_llm.jobs._executors import make_executor, sbatch_parameters
from slurm_llm.jobs._slurm_state import SlurmStates
from slurm_llm.node._launcher import job_deadline
from slurm_llm.spec._model_spec import ModelSpec, time_limit_min

ControllerKind = Literal["thread", "process", "job"]
# A controller that has not reconciled for this long (or this many intervals) is dead.
STALE_AFTER_S = 30.0
STALE_AFTER_INTERVALS = 5
# Between passes, how often a controller asks its deployment whether it is wanted at once (an
# elastic deployment at zero replicas that a request has just asked for).
WANTED_POLL_S = 0.1
PROCESS_MARK = "slurm_llm controller run"


class ControllerRecord(BaseModel):
    """``controller.json``: who keeps the deployment whole, and when it last did."""

    deployment: str
    kind: ControllerKind
    host: str
    pid: int
    job_id: str | None = None
    started: float
    last_reconcile: float | None = None  # None: submitted, not running yet
    interval: float
    deadline: float | None = None  # the controller job's own wall-time end
    successor: str | None = None  # its successor job during a handover
    log_path: str | None = None

    def dead_reason(self, now: float | None = None) -> str | None:
        """Why this controller no longer keeps its deployment whole, or None while it does
        (or while its job waits in SLURM's queue)."""
        now = time.time() if now is None else now
        if self.kind != "job" and self.host == socket.gethostname() and not pid_alive(self.pid):
            return f"its process {self.pid} on {self.host} is gone"
        silent = now - (self.last_reconcile or self.started)
        if silent <= max(STALE_AFTER_S, STALE_AFTER_INTERVALS * self.interval):
            return None
        if self.kind == "job" and self.job_id:
            state = SlurmStates().query([self.job_id])[self.job_id]
            if state.state in ("PENDING", "REQUEUED", "UNKNOWN"):
                return None
            if not state.active:
                return f"its job {self.job_id} has ended ({state.state})"
        return f"it has not reconciled for {silent:.0f} s"

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.last_reconcile is None:
            return f"job {self.job_id} submitted, waiting in SLURM's queue"
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

    @property
    def spec(self) -> ModelSpec: ...

    def folder(self) -> Path: ...

    def exists(self) -> bool: ...

    def reconcile(self) -> list[str] | None: ...

    def wanted_now(self) -> bool:
        """Whether a pass should run before the interval is over."""
        ...

    def record_events(self, texts: list[str]) -> None: ...


def record_path(folder: Path) -> Path:
    return folder / "controller.json"


def waiting_path(folder: Path, who: str) -> Path:
    """Where standby ``who`` (a job id, or host-pid) says it waits for the lock."""
    return folder / f"controller.waiting.{who}"


def read_record(folder: Path) -> ControllerRecord | None:
    try:
        return ControllerRecord.model_validate_json(record_path(folder).read_text())
    except (FileNotFoundError, ValidationError):
        return None


# Lock descriptors this process holds. A fork() (multiprocessing, a DataLoader's workers in a
# notebook whose thread keeps a deployment) copies them, and a flock lives as long as any copy:
# children close theirs at once, so a lock ends with the controller that took it.
_LOCK_FDS: set[int] = set()


def _close_lock_fds_in_child() -> None:
    for fd in _LOCK_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_FDS.clear()


os.register_at_fork(after_in_child=_close_lock_fds_in_child)


@contextlib.contextmanager
def controller_lock(folder: Path) -> Iterator[Callable[[], bool]]:
    """A ``try_take()`` that takes the deployment's controller lock without waiting; the lock
    is held until the context ends (or the process dies, which the kernel notices)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "controller.lock", os.O_RDWR | os.O_CREAT, 0o644)
    _LOCK_FDS.add(fd)
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
        _LOCK_FDS.discard(fd)
        os.close(fd)  # releases the lock


class Controller:
    """One controller's life: wait to hold the lock, then reconcile every ``interval`` and
    write the record, until ``stop`` is set, the deployment is gone, or ``hand_over`` says
    a successor has taken over. A pass that fails is logged (with its traceback, to this
    controller's stderr) and tried again on the next one: the loop itself never dies of it."""

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
        self.record = ControllerRecord(
            deployment=deployment.name, kind=kind, host=socket.gethostname(), pid=os.getpid(),
            job_id=job_id, started=time.time(), interval=interval, deadline=deadline,
            log_path=log_path,
        )  # fmt: skip
        self.stop = threading.Event()
        self.me = job_id or f"{self.record.host}-{self.record.pid}-{threading.get_ident()}"

    def run(
        self,
        hand_over: Callable[[Controller], bool] | None = None,
        may_wait: Callable[[], bool] = lambda: True,
    ) -> str:
        """Returns why it ended: "stopped", "deployment gone", "handed over", or "another
        controller runs" (when ``may_wait`` says this one must not wait as a standby)."""
        marker = waiting_path(self.folder, self.me)
        try:
            with controller_lock(self.folder) as try_take:
                while not self.stop.is_set():
                    if not self.deployment.exists():
                        return "deployment gone"
                    if try_take():
                        marker.unlink(missing_ok=True)  # a standby no more
                        if self._pass(hand_over):
                            return "handed over"
                    elif not may_wait():
                        return "another controller runs"
                    elif not marker.exists():
                        write_atomic(marker, self.record.model_dump_json())
                    self._pause()
            return "stopped"
        finally:
            marker.unlink(missing_ok=True)

    def _pause(self) -> None:
        """Until the next pass: ``interval``, or less when the deployment is wanted at once
        (a request waits for an elastic deployment at zero to wake)."""
        deadline = time.monotonic() + self.record.interval
        while (left := deadline - time.monotonic()) > 0:
            if self.stop.wait(min(WANTED_POLL_S, left)) or self._wanted_now():
                return

    def _wanted_now(self) -> bool:
        try:
            return self.deployment.wanted_now()
        except Exception:  # an unreadable report must not end the loop: the pass will come
            traceback.print_exc()
            return False

    def successor_waits(self, job_id: str) -> bool:
        """Whether job ``job_id`` has started and waits for this controller's lock."""
        return waiting_path(self.folder, job_id).exists()

    def _pass(self, hand_over: Callable[[Controller], bool] | None) -> bool:
        """One reconcile pass and the record; True once a successor has taken over."""
        try:
            if self.deployment.reconcile() is not None:
                self.publish(last_reconcile=time.time())
            return hand_over is not None and hand_over(self)
        except Exception as exc:  # keep the replicas alive through a transient error
            traceback.print_exc()
            with contextlib.suppress(Exception):
                self.deployment.record_events([f"reconcile failed: {exc!r}"])
            return False

    def publish(self, **changes: object) -> None:
        """Writes the record (only while the deployment exists: never resurrect a stopped one)."""
        self.record = self.record.model_copy(update=changes)
        if self.deployment.exists():
            write_atomic(record_path(self.folder), self.record.model_dump_json())

    def withdraw(self) -> None:
        """Removes the record if it is still ours (a successor may have written its own)."""
        published = read_record(self.folder)
        if published is not None and (published.host, published.pid, published.job_id) == (
            self.record.host, self.record.pid, self.record.job_id
        ):  # fmt: skip
            remove_durably(record_path(self.folder))


def stop_controllers(folder: Path, timeout: float = 15.0) -> None:
    """Ends the deployment's controller (and a successor), wherever it runs, and waits until
    none holds the lock. Call it once the deployment's state is gone: controllers that no
    signal reaches end on their next pass by themselves. Never raises: a stop must go on."""
    record = read_record(folder)
    if record is not None:
        for job_id in (record.job_id, record.successor):
            if record.kind == "job" and job_id:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run(["scancel", job_id], capture_output=True, check=False,
                                   timeout=30)  # fmt: skip
        ours = record.kind == "process" and record.host == socket.gethostname()
        if ours and _is_controller_process(record.pid, record.deployment):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(record.pid, signal.SIGTERM)
    with controller_lock(folder) as try_take:
        wait_until(try_take, timeout, every=0.05)
    remove_durably(record_path(folder))
    for marker in folder.glob("controller.waiting.*"):
        marker.unlink(missing_ok=True)


def _is_controller_process(pid: int, deployment: str) -> bool:
    """Whether ``pid`` still is that deployment's controller process (not a reused pid)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return PROCESS_MARK in " ".join(args) and deployment in args


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
        try:
            deployment = self.attach(self.name, Path(self.home))
        except DeploymentError:  # stopped before this job started
            deployment = None
        if deployment is None:
            return "deployment gone"
        env = submitit.JobEnvironment()
        spec = deployment.spec
        controller = Controller(
            deployment, "job", self.interval, job_id=str(env.job_id),
            deadline=job_deadline(time.time(), spec), log_path=str(env.paths.stdout),
        )  # fmt: skip
        # SLURM's USR2 (checkpoint and requeue) waits until a pass is over, so a pass is never
        # cut between sbatch and saving the state.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
        try:
            outcome = controller.run(
                lambda c: self._hand_over(c, spec), may_wait=lambda: self._may_wait(controller)
            )
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        print(f"[slurm-llm] controller of {self.name}: {outcome}", flush=True)
        if outcome != "handed over":
            controller.withdraw()
        return outcome

    def _may_wait(self, controller: Controller) -> bool:
        """A controller job waits as a standby only as the named successor of a live one (or
        when the holder is dead): a second controller job would hold a CPU for nothing."""
        holder = read_record(controller.folder)
        if holder is None or holder.dead_reason() is not None:
            return True
        return holder.successor == controller.record.job_id

    def _hand_over(self, controller: Controller, spec: ModelSpec) -> bool:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})  # between passes only
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
        deadline = controller.record.deadline
        if self._successor is not None and not self._successor_alive():
            controller.deployment.record_events(
                [f"successor controller job {self._successor} ended before taking over"]
            )
            self._successor = None
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

    def _successor_alive(self) -> bool:
        assert self._successor is not None
        state = SlurmStates().query([self._successor])[self._successor]
        return state.active or state.state == "UNKNOWN"

    # submitit's stub says it returns a DelayedSubmission; None (no requeue) is documented too.
    def checkpoint(self) -> submitit.helpers.DelayedSubmission | None:  # type: ignore[override]
        """Preemption or wall-time: requeue, unless a live successor job is on its way."""
        if self._successor is not None and self._successor_alive():
            return None
        self._successor = None
        return submitit.helpers.DelayedSubmission(self)


def controller_job_name(deployment: str) -> str:
    """``slurm-llm-controller+NAME``: a ``+`` cannot occur in a deployment's name, so no
    deployment's replica jobs (``slurm-llm-NAME``) are ever taken for another's controller."""
    return f"slurm-llm-controller+{deployment}"


def submit_controller_job(main: ControllerMain, spec: ModelSpec, folder: Path) -> submitit.Job[str]:
    """One small job (1 CPU, 1 GB) with the replicas' partition, account and wall-time; not
    their extra sbatch options, which may ask for GPUs."""
    executor = make_executor("slurm", folder / "controller-jobs")
    options = spec.slurm.model_copy(update={"extra": {}})
    executor.update_parameters(**sbatch_parameters(
        options, controller_job_name(main.name), time_min=time_limit_min(spec), cpus=1,
        mem_gb=1,
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
    slurm: bool,
    interval: float = 1.0,
    timeout: float = 60.0,
) -> ControllerRecord:
    """Starts a controller that outlives the caller; returns once it has reconciled, or (a
    SLURM job still in the queue after ``timeout``) once it is submitted.

    On SLURM it is a job of its own; without SLURM, a process in a session of its own, so
    that closing the terminal or ending the SSH session does not end it.
    """
    folder = deployment.folder()
    asked = time.time()
    if slurm:
        main = ControllerMain(deployment.name, str(home_dir(home)), interval, attach)
        job_id = submit_controller_job(main, deployment.spec, folder).job_id
        pending = ControllerRecord(deployment=deployment.name, kind="job", host="", pid=0,
                                   job_id=job_id, started=asked, interval=interval)  # fmt: skip
        if read_record(folder) is None:
            write_atomic(record_path(folder), pending.model_dump_json())
    else:
        _spawn_detached(deployment.name, home, interval, folder / "controller.log")
    for _ in polling(timeout, every=0.1):
        record = read_record(folder)
        if record is not None and record.started >= asked and record.last_reconcile:
            return record
    if slurm:
        return pending
    raise DeploymentError(
        f"the controller process of {deployment.name!r} did not reconcile within "
        f"{timeout:.0f} s; see {folder / 'controller.log'}"
    )


def _spawn_detached(name: str, home: Path | None, interval: float, log: Path) -> None:
    """``slurm-llm controller run NAME`` as a grandchild in a session of its own: the child
    that starts it exits at once, so the controller belongs to no terminal and to no process
    of the caller's."""
    argv = [sys.executable, "-m", "slurm_llm", "controller", "run", name, "--interval",
            str(interval)]  # fmt: skip
    starter = (
        "import subprocess, sys\n"
        "subprocess.Popen(sys.argv[1:], start_new_session=True, stdin=subprocess.DEVNULL)"
    )
    env = {**os.environ, "SLURM_LLM_HOME": str(home_dir(home))}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        done = subprocess.run([sys.executable, "-c", starter, *argv], stdin=subprocess.DEVNULL,
                              stdout=out, stderr=out, env=env, check=False)  # fmt: skip
    if done.returncode != 0:
        raise DeploymentError(f"could not start the controller process of {name!r}; see {log}")


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
