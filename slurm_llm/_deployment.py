"""``deploy()`` and the ``Deployment`` handle: the researcher's view of a model's replicas.

A deployment is a name, a spec, and one slot per replica index; a slot holds the job serving it
and, during a wall-time handover, the successor that will take over. This state lives in a JSON
file beside the registry, so any process (the CLI, a second notebook) can attach to it, show its
status, reconcile it and stop it; a lock keeps two processes from acting on it at once.
Readiness is never guessed: a replica is ready exactly when its launcher has published a live
registry record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

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
from slurm_llm._files import write_atomic
from slurm_llm._launcher import ReplicaLauncher
from slurm_llm._paths import deployments_dir, registry_dir
from slurm_llm._registry import EndpointRecord, Registry
from slurm_llm._replica_job import ReplicaJob, job_states
from slurm_llm._slurm_state import JobState, SlurmStates
from slurm_llm._spec import ModelSpec

ReplicaState = Literal["pending", "starting", "ready", "failed", "stopped"]
# Ends that say nothing about the replica itself: replace it, however young it was.
INFRASTRUCTURE_ENDS = frozenset({"CANCELLED", "NODE_FAIL", "BOOT_FAIL", "PREEMPTED", "DEADLINE"})
MAX_FAILURES_IN_A_ROW = 5
MAX_EVENTS = 200
# How stale SLURM's answer may be in a loop that waits: readiness itself comes from the registry
# (a file read) at once, so a slower squeue only delays noticing a failure, by up to this.
SLURM_POLL_S = 1.0


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
    successor: str | None = None


@dataclass
class Slot:
    """One replica index: the job serving it, a successor during handover, and its history."""

    job: ReplicaJob
    successor: ReplicaJob | None = None
    failures: int = 0
    gave_up: str | None = None

    def jobs(self) -> list[ReplicaJob]:
        return [self.job] + ([self.successor] if self.successor else [])


class Deployment:
    """Replicas of one model: submit, wait until ready, inspect, scale, keep alive, stop.

    Use it as a context manager so the replicas stop when the block ends (unless ``detach()``).
    """

    def __init__(
        self,
        name: str,
        spec: ModelSpec,
        kind: ExecutorKind,
        home: Path | None = None,
        owned: bool = True,
    ) -> None:
        self.name = name
        self.spec = spec
        self.kind = kind
        self.slots: dict[int, Slot] = {}
        self.events: list[str] = []
        self._home = home
        self._owned = owned
        self._known_jobs: dict[str, ReplicaJob] = {}
        self._slurm = SlurmStates()
        self._keeper: threading.Thread | None = None
        self._keeping = threading.Event()
        self.registry = Registry(registry_dir(home))

    # ---- what clients need ------------------------------------------------------------------

    def records(self) -> list[EndpointRecord]:
        """Live records of the jobs this deployment counts on (successors included)."""
        self._load()
        wanted = {(i, job.job_id) for i, slot in self.slots.items() for job in slot.jobs()}
        return [r for r in self.registry.records(self.name) if (r.replica, r.job_id) in wanted]

    @property
    def endpoints(self) -> list[str]:
        """Base URLs of ready replicas (OpenAI API under ``/v1``)."""
        return [record.url for record in self.records()]

    @property
    def jobs(self) -> dict[int, ReplicaJob]:
        """The job currently serving each replica index."""
        self._load()
        return {index: slot.job for index, slot in self.slots.items()}

    # ---- status -----------------------------------------------------------------------------

    def status(self, max_age_s: float = 0.0) -> list[ReplicaStatus]:
        """Each replica's state; SLURM's part may be up to ``max_age_s`` old."""
        records = self.records()  # loads the state too
        states = self._states(max_age_s)
        return [
            self._slot_status(i, slot, records, states) for i, slot in sorted(self.slots.items())
        ]

    def _slot_status(
        self, index: int, slot: Slot, records: list[EndpointRecord], states: dict[str, JobState]
    ) -> ReplicaStatus:
        job = slot.job
        base: dict[str, Any] = {
            "replica": index,
            "job_id": job.job_id,
            "log_path": str(job.log_path),
            "successor": slot.successor.job_id if slot.successor else None,
        }
        if slot.gave_up:
            return ReplicaStatus(state="failed", reason=slot.gave_up, **base)
        live = [r for r in records if r.replica == index]
        if live:
            own = [r for r in live if r.job_id == job.job_id] or live
            return ReplicaStatus(state="ready", url=own[0].url, node=own[0].node, **base)
        state = states.get(job.job_id, JobState("UNKNOWN"))
        if state.hopeless:
            reason = f"SLURM will never start it: {state.reason}"
            return ReplicaStatus(state="failed", reason=reason, **base)
        if state.state == "PENDING":
            return ReplicaStatus(state="pending", reason=state.reason, **base)
        if state.active or state.state == "UNKNOWN":
            return ReplicaStatus(state="starting", node=state.nodes, **base)
        if state.state == "CANCELLED":
            return ReplicaStatus(state="stopped", reason="cancelled", **base)
        return ReplicaStatus(state="failed", reason=job.failure_reason(state), **base)

    def wait_ready(self, timeout: float | None = None, progress: bool = True) -> Deployment:
        """Blocks until every replica is ready; raises with reasons and logs if one fails."""
        deadline = None if timeout is None else time.monotonic() + timeout
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} ready · {task.fields[detail]}"),
            TimeElapsedColumn(),
        )
        console = Console(stderr=True)
        with Progress(*columns, console=console, transient=True, disable=not progress) as bar:
            task = bar.add_task(self.name, total=len(self.slots), detail="submitted")
            while True:
                statuses = self.status(max_age_s=SLURM_POLL_S)
                counts = {s: sum(1 for x in statuses if x.state == s) for s in _STATES}
                detail = ", ".join(f"{n} {s}" for s, n in counts.items() if n and s != "ready")
                bar.update(task, total=len(statuses), completed=counts["ready"],
                           detail=detail or "all ready")  # fmt: skip
                broken = [s for s in statuses if s.state in ("failed", "stopped")]
                if broken:
                    raise DeploymentError(_describe_failures(self.name, broken))
                if counts["ready"] == len(statuses):
                    return self
                if deadline is not None and time.monotonic() > deadline:
                    waiting = ", ".join(str(s.log_path) for s in statuses if s.state != "ready")
                    raise DeploymentError(
                        f"deployment {self.name!r} not ready after {timeout:.0f} s ({detail}); "
                        f"logs: {waiting}"
                    )
                time.sleep(0.05)

    # ---- changing it ------------------------------------------------------------------------

    def scale(self, replicas: int) -> Deployment:
        """Adds replicas at new indices or stops the highest ones; does not wait for readiness."""
        if replicas < 0:
            raise DeploymentError(f"cannot scale {self.name!r} to {replicas} replicas")
        with self._locked():
            current = sorted(self.slots)
            doomed: list[tuple[int, Slot]] = []
            if replicas > len(current):
                start = current[-1] + 1 if current else 0
                new = range(start, start + replicas - len(current))
                for index, job in self._submit(new).items():
                    self.slots[index] = Slot(job)
            else:
                doomed = [(index, self.slots.pop(index)) for index in current[replicas:]]
            self.spec = self.spec.with_overrides(replicas=replicas)
            self._save()
        self._stop_slots(doomed)
        return self

    def reconcile(self) -> list[str]:
        """One pass of keeping the deployment whole; returns what it did, for logs and tests.

        - a job that ended is replaced (scancel, node failure, an engine past its restart limit),
          unless it failed before ever being ready: that is a spec or site problem that another
          job would repeat, so the slot is marked failed with the reason instead;
        - a job SLURM will never start (its pending reason says so) is cancelled, likewise;
        - a replica near its wall-time gets a successor, and is cancelled once that is ready.
        """
        with self._locked(blocking=False) as got:
            if not got:
                return []  # another process is reconciling this deployment
            actions = self._reconcile_locked()
            if actions:
                self._save()
        return actions

    def _reconcile_locked(self) -> list[str]:
        records = self.registry.records(self.name)
        live = {(r.replica, r.job_id): r for r in records}
        states = self._states()
        now = time.time()
        actions: list[str] = []
        for index, slot in sorted(self.slots.items()):
            if slot.gave_up:
                continue
            if slot.successor is not None:
                actions += self._advance_handover(index, slot, live, states)
            state = states.get(slot.job.job_id, JobState("UNKNOWN"))
            if state.hopeless:
                slot.gave_up = f"SLURM will never start job {slot.job.job_id}: {state.reason}"
                slot.job.cancel()
                actions.append(f"replica {index}: {slot.gave_up}; cancelled")
            elif not state.active and state.state != "UNKNOWN":
                actions += self._replace(index, slot, state, live)
            elif slot.successor is None:
                record = live.get((index, slot.job.job_id))
                if record and record.deadline and record.deadline - now < self.spec.handover_s:
                    [slot.successor] = self._submit([index]).values()
                    actions.append(
                        f"replica {index}: job {slot.job.job_id} ends in "
                        f"{record.deadline - now:.0f} s; successor job {slot.successor.job_id}"
                    )
        self.events = [*self.events, *(f"{time.strftime('%H:%M:%S')} {a}" for a in actions)]
        self.events = self.events[-MAX_EVENTS:]
        return actions

    def _advance_handover(
        self,
        index: int,
        slot: Slot,
        live: dict[tuple[int, str], EndpointRecord],
        states: dict[str, JobState],
    ) -> list[str]:
        assert slot.successor is not None
        successor = slot.successor
        if (index, successor.job_id) in live:
            old, slot.job, slot.successor = slot.job, successor, None
            old.cancel()
            return [f"replica {index}: successor {successor.job_id} ready; retired {old.job_id}"]
        state = states.get(successor.job_id, JobState("UNKNOWN"))
        if not state.active and state.state != "UNKNOWN":
            slot.successor = None
            return [f"replica {index}: successor {successor.job_id} ended ({state.state})"]
        return []

    def _replace(
        self, index: int, slot: Slot, state: JobState, live: dict[tuple[int, str], EndpointRecord]
    ) -> list[str]:
        dead = slot.job
        self.registry.withdraw(self.name, index, dead.job_id)  # it may have died without cleanup
        reason = dead.failure_reason(state)
        was_ready = dead.was_ready()
        if not was_ready and state.state not in INFRASTRUCTURE_ENDS:
            slot.gave_up = f"job {dead.job_id} failed before it was ready: {reason}"
            return [f"replica {index}: {slot.gave_up}"]
        slot.failures = 1 if was_ready else slot.failures + 1
        if slot.failures > MAX_FAILURES_IN_A_ROW:
            slot.gave_up = f"{slot.failures - 1} replacements in a row ended; last: {reason}"
            return [f"replica {index}: giving up: {slot.gave_up}"]
        if slot.successor is not None:  # the handover successor takes over now
            slot.job, slot.successor = slot.successor, None
        else:
            [slot.job] = self._submit([index]).values()
        first_line = reason.splitlines()[0] if reason else state.state
        return [
            f"replica {index}: job {dead.job_id} ended ({state.state}: {first_line}); "
            f"now served by job {slot.job.job_id}"
        ]

    def keep_alive(self, interval: float = 1.0) -> Deployment:
        """Reconciles in a background thread until ``stop()`` (or the process ends)."""
        if self._keeper is None or not self._keeper.is_alive():
            self._keeping.clear()
            self._keeper = threading.Thread(
                target=self._keep, args=(interval,), name=f"keep-alive-{self.name}", daemon=True
            )
            self._keeper.start()
        return self

    def _keep(self, interval: float) -> None:
        while not self._keeping.wait(interval):
            try:
                self.reconcile()
            except Exception as exc:  # keep the replicas alive through a transient error
                self.events.append(f"{time.strftime('%H:%M:%S')} reconcile failed: {exc}")

    def stop(self, timeout: float = 30.0) -> None:
        """Cancels every replica, waits for the jobs to end, and forgets the deployment."""
        self._keeping.set()
        if self._keeper is not None:
            self._keeper.join(timeout=10)
        with self._locked():
            slots = list(self.slots.items())
            self.slots = {}
            _state_path(self.name, self._home).unlink(missing_ok=True)
        self._stop_slots(slots, timeout)

    def detach(self) -> Deployment:
        """Leaves the replicas running after this handle's ``with`` block; ``attach()`` finds
        them again from any process."""
        self._owned = False
        return self

    def _stop_slots(self, slots: Iterable[tuple[int, Slot]], timeout: float = 30.0) -> None:
        pairs = [(index, job) for index, slot in slots for job in slot.jobs()]
        for _, job in pairs:
            job.cancel()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = job_states([job for _, job in pairs], self._slurm, SLURM_POLL_S)
            if not any(state.active for state in states.values()):
                break
            time.sleep(0.1)
        for index, job in pairs:  # a launcher killed before its cleanup leaves a record
            self.registry.withdraw(self.name, index, job.job_id)

    # ---- persistence ------------------------------------------------------------------------

    def _states(self, max_age_s: float = 0.0) -> dict[str, JobState]:
        jobs = [job for slot in self.slots.values() for job in slot.jobs()]
        return job_states(jobs, self._slurm, max_age_s)

    def _submit(self, indices: Iterable[int]) -> dict[int, ReplicaJob]:
        jobs = _submit(self.spec, self.name, self.kind, indices, self._home)
        self._known_jobs.update({job.job_id: job for job in jobs.values()})
        return jobs

    @contextlib.contextmanager
    def _locked(self, blocking: bool = True) -> Iterator[bool]:
        """Holds the deployment's lock with its state freshly loaded."""
        path = _state_path(self.name, self._home).with_name("lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            self._load()
            yield True
        finally:
            os.close(fd)

    def _load(self) -> None:
        try:
            state = json.loads(_state_path(self.name, self._home).read_text())
        except FileNotFoundError:
            self.slots = {}
            return
        self.spec = ModelSpec(**state["spec"])
        self.events = state.get("events", [])
        self.slots = {int(index): self._slot(entry) for index, entry in state["slots"].items()}

    def _slot(self, entry: dict[str, Any]) -> Slot:
        successor = entry.get("successor")
        return Slot(
            job=self._job(entry["job"]),
            successor=self._job(successor) if successor else None,
            failures=entry.get("failures", 0),
            gave_up=entry.get("gave_up"),
        )

    def _job(self, entry: dict[str, str]) -> ReplicaJob:
        job_id = entry["job_id"]
        if job_id not in self._known_jobs:  # keep local Popen handles of jobs we submitted
            self._known_jobs[job_id] = ReplicaJob.reattach(self.kind, Path(entry["folder"]), job_id)
        return self._known_jobs[job_id]

    def _save(self) -> None:
        def job(j: ReplicaJob) -> dict[str, str]:
            return {"job_id": j.job_id, "folder": str(j.folder)}

        state = {
            "name": self.name,
            "kind": self.kind,
            "spec": self.spec.model_dump(mode="json"),
            "slots": {
                str(index): {
                    "job": job(slot.job),
                    "successor": job(slot.successor) if slot.successor else None,
                    "failures": slot.failures,
                    "gave_up": slot.gave_up,
                }
                for index, slot in self.slots.items()
            },
            "events": self.events,
        }
        write_atomic(_state_path(self.name, self._home), json.dumps(state, indent=2))

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
        return f"Deployment({self.name!r}, replicas={len(self.slots)}, executor={self.kind!r})"


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
    keep_alive: bool = True,
) -> Deployment:
    """Submits ``replicas`` replicas of ``spec`` (SLURM if available, else this machine).

    If a deployment of the same name is already running (from any process), it is attached to
    and scaled to ``replicas`` instead of being doubled; its spec must match. With
    ``keep_alive`` (the default) this process replaces dead replicas and hands over before
    wall-time ends, for as long as it runs.
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
        deployment = existing.scale(count) if len(existing.slots) != count else existing
    else:
        deployment = Deployment(name, spec.with_overrides(replicas=count), resolve_kind(executor),
                                home_path)  # fmt: skip
        with deployment._locked():
            deployment.slots = {i: Slot(job) for i, job in deployment._submit(range(count)).items()}
            deployment._save()
    if wait:
        try:
            deployment.wait_ready(timeout, progress)
        except BaseException:
            if deployment._owned:
                deployment.stop()
            raise
    if keep_alive:
        deployment.keep_alive()
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
    deployment = Deployment(name, ModelSpec(**state["spec"]), state["kind"], home_path, owned=False)
    deployment._load()
    states = deployment._states()
    if deployment.slots and not any(s.active for s in states.values()):
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
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    folder = deployments_dir(home) / name / "jobs" / stamp
    launcher = ReplicaLauncher(spec.resolved(), name, registry_dir(home))
    executor = make_executor(kind, folder)
    if kind == "slurm":
        executor.update_parameters(**slurm_parameters(spec, f"slurm-llm-{name}"))
        try:
            jobs = executor.map_array(launcher, indices)
        except Exception as exc:  # sbatch's own words are the clearest explanation
            raise DeploymentError(
                f"SLURM refused the replicas of {name!r}: {str(exc).strip()}; check the spec's "
                "slurm options (partition, account, qos, constraint) and its GPUs per replica"
            ) from None
        return {i: ReplicaJob(kind, folder, job) for i, job in zip(indices, jobs, strict=True)}
    submitted = {}
    with detached_output(folder / "controllers.log"):
        for index in indices:  # one submission each: replicas must not share GPUs
            executor.update_parameters(**local_parameters(spec, index))
            submitted[index] = ReplicaJob(kind, folder, executor.submit(launcher, index))
    return submitted


def _state_path(name: str, home: Path | None) -> Path:
    return deployments_dir(home) / name / "state.json"


def _describe_failures(name: str, broken: list[ReplicaStatus]) -> str:
    parts = [f"deployment {name!r}: {len(broken)} replica(s) did not start"]
    for status in broken:
        parts.append(
            f"- replica {status.replica} (job {status.job_id}) {status.state}: {status.reason}\n"
            f"  log: {status.log_path}"
        )
    return "\n".join(parts)
