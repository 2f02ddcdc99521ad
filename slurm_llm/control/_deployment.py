"""``deploy()`` and the ``Deployment`` handle: the researcher's view of a model's replicas.

A deployment is a name, a spec, and one slot per replica index; a slot holds the job serving it
and, during a wall-time handover, the successor that will take over. This state lives in
``<home>/deployments/<name>/state.json``, so any process (the CLI, a second notebook, the
deployment's controller) can attach to it, show its status, reconcile it and stop it.

One rule keeps it consistent across threads and processes: the state is only ever changed
under the deployment's lock, loaded fresh, changed and saved in one go (``_change``); readers
take a snapshot of the file and never write anything back. Readiness is never guessed: a
replica is ready exactly when its launcher has published a live registry record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from slurm_llm._demand import DemandReport, fresh_reports, model_demand, still_routed
from slurm_llm._errors import DeploymentError
from slurm_llm._files import write_atomic
from slurm_llm._paths import deployments_dir, registry_dir
from slurm_llm._polling import polling
from slurm_llm._registry import EndpointRecord, Registry
from slurm_llm.control._autoscale import Autoscaler, ScalingRecord, read_scaling, scaling_path
from slurm_llm.control._controller import (
    Controller,
    ControllerRecord,
    read_record,
    start_controller,
    stop_controllers,
)
from slurm_llm.control._event_log import Event, EventLog
from slurm_llm.control._reconcile import JobFacts, JobRef, Plan, Slot, plan
from slurm_llm.control._scheduler import Scheduler, SubmititScheduler
from slurm_llm.jobs._executors import ExecutorKind, resolve_kind
from slurm_llm.jobs._replica_job import ReplicaJob
from slurm_llm.jobs._slurm_state import JobState
from slurm_llm.spec._model_spec import DRAIN_TIMEOUT_S, SERVED_NAME, ModelSpec

ReplicaState = Literal["pending", "starting", "ready", "draining", "failed", "stopped"]
ControllerChoice = Literal["thread", "job", "none"]
# How stale SLURM's answer may be in a loop that waits: readiness itself comes from the registry
# (a file read) at once, so a slower squeue only delays noticing a failure, by up to this.
SLURM_POLL_S = 1.0
# How often a pass also looks for jobs of this deployment that no state names (submitted by a
# process that died between sbatch and saving); stop() always looks.
ORPHAN_SWEEP_S = 30.0
# A router reads the registry twice a second: its reports from this long after a drain began
# are the first that can show it has seen the marker.
ROUTERS_NOTICE_S = 1.5


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


@dataclass(frozen=True)
class DeploymentState:
    """What ``state.json`` holds, as one immutable snapshot."""

    name: str
    kind: ExecutorKind
    spec: ModelSpec
    slots: dict[int, Slot]

    def jobs(self) -> list[JobRef]:
        return [job for slot in self.slots.values() for job in slot.jobs()]

    def to_json(self) -> str:
        def job(ref: JobRef | None) -> dict[str, str] | None:
            return None if ref is None else {"job_id": ref.job_id, "folder": ref.folder}

        return json.dumps(
            {
                "name": self.name,
                "kind": self.kind,
                # A fixed-size spec is saved without the autoscale field, as before it existed.
                "spec": self.spec.model_dump(
                    mode="json", exclude={"autoscale"} if self.spec.autoscale is None else None
                ),
                "slots": {
                    str(index): {
                        "job": job(slot.job),
                        "successor": job(slot.successor),
                        "failures": slot.failures,
                        "gave_up": slot.gave_up,
                        "draining_since": slot.draining_since,
                    }
                    for index, slot in sorted(self.slots.items())
                },
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> DeploymentState:
        raw = json.loads(text)

        def job(entry: dict[str, str] | None) -> JobRef | None:
            return None if entry is None else JobRef(entry["job_id"], entry["folder"])

        slots = {}
        for index, entry in raw["slots"].items():
            serving = job(entry["job"])
            assert serving is not None
            slots[int(index)] = Slot(
                serving, job(entry.get("successor")), entry.get("failures", 0),
                entry.get("gave_up"), entry.get("draining_since"),
            )  # fmt: skip
        return cls(raw["name"], raw["kind"], ModelSpec(**raw["spec"]), slots)


class Deployment:
    """Replicas of one model: submit, wait until ready, inspect, scale, keep alive, stop.

    Use it as a context manager so the replicas stop when the block ends (unless ``detach()``).
    Every method may be called from any thread, and from several processes at once.
    """

    def __init__(
        self,
        name: str,
        spec: ModelSpec,
        kind: ExecutorKind,
        home: Path | None = None,
        owned: bool = True,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self._spec = spec
        self._home = home
        self.scheduler: Scheduler = scheduler or SubmititScheduler(kind, home)
        self.registry = Registry(registry_dir(home))
        self.event_log = EventLog(self.folder() / "events.jsonl")
        self._owned = owned
        self._keeper: Controller | None = None
        self._keeper_thread: threading.Thread | None = None
        self.sweep_every_s = ORPHAN_SWEEP_S
        self._last_sweep = float("-inf")
        self._autoscaler: Autoscaler | None = None  # the controller's demand history
        self._asleep_since: float | None = None  # when its last pass left it at zero replicas
        self._running_since: dict[str, float] = {}  # job -> when a pass first saw it run

    # ---- reading: snapshots only --------------------------------------------------------------

    def folder(self) -> Path:
        """Where this deployment's state, events, lock and job folders live."""
        return deployments_dir(self._home) / self.name

    def snapshot(self) -> DeploymentState:
        """The state as saved last; empty once the deployment has stopped."""
        try:
            return DeploymentState.from_json(self._state_path.read_text())
        except FileNotFoundError:
            return DeploymentState(self.name, self.kind, self._spec, {})

    def exists(self) -> bool:
        return self._state_path.exists()

    @property
    def spec(self) -> ModelSpec:
        return self.snapshot().spec

    @property
    def slots(self) -> dict[int, Slot]:
        """Each replica index's slot, as saved last (a copy: changing it changes nothing)."""
        return self.snapshot().slots

    def records(self, state: DeploymentState | None = None) -> list[EndpointRecord]:
        """Live records of the jobs this deployment counts on (successors included)."""
        state = state or self.snapshot()
        wanted = {(i, job.job_id) for i, slot in state.slots.items() for job in slot.jobs()}
        return [r for r in self.registry.records(self.name) if (r.replica, r.job_id) in wanted]

    @property
    def endpoints(self) -> list[str]:
        """Base URLs of ready replicas (OpenAI API under ``/v1``)."""
        return [record.url for record in self.records()]

    @property
    def jobs(self) -> dict[int, ReplicaJob]:
        """The job currently serving each replica index."""
        return {i: self._handle(slot.job) for i, slot in self.snapshot().slots.items()}

    @property
    def events(self) -> list[str]:
        """The most recent events, oldest first, as ``HH:MM:SS what happened``."""
        return [str(event) for event in self.event_log.last(200)]

    def events_since(self, seq: int) -> list[Event]:
        """Events numbered above ``seq``: follow a deployment by the last number seen."""
        return self.event_log.read(after=seq)

    def has_ended(self) -> bool:
        """True when it has replicas and SLURM (or this machine) runs none of their jobs, as
        after a reboot or a cluster's restart; False while any job's state is unknown."""
        state = self.snapshot()
        states = self.scheduler.states(state.jobs())
        return bool(state.slots) and all(
            not s.active and s.state != "UNKNOWN" for s in states.values()
        )

    def scaling(self) -> ScalingRecord | None:
        """An elastic deployment's replicas and recent scaling decisions, as its controller
        last wrote them (None before its first pass, or for a fixed-size deployment)."""
        return read_scaling(self.folder())

    def controller(self) -> ControllerRecord | None:
        """The controller that keeps this deployment whole, as it last reported."""
        return read_record(self.folder())

    # ---- status -----------------------------------------------------------------------------

    def status(self, max_age_s: float = 0.0) -> list[ReplicaStatus]:
        """Each replica's state; SLURM's part may be up to ``max_age_s`` old."""
        state = self.snapshot()
        records = self.records(state)
        states = self.scheduler.states(state.jobs(), max_age_s)
        return [
            self._slot_status(i, slot, records, states) for i, slot in sorted(state.slots.items())
        ]

    def _slot_status(
        self, index: int, slot: Slot, records: list[EndpointRecord], states: dict[str, JobState]
    ) -> ReplicaStatus:
        job = slot.job
        base: dict[str, Any] = {
            "replica": index,
            "job_id": job.job_id,
            "log_path": self.scheduler.log_path(job),
            "successor": slot.successor.job_id if slot.successor else None,
        }
        if slot.gave_up:
            return ReplicaStatus(state="failed", reason=slot.gave_up, **base)
        live = [r for r in records if r.replica == index]
        if live:
            own = [r for r in live if r.job_id == job.job_id] or live
            serving: ReplicaState = "ready" if slot.draining_since is None else "draining"
            return ReplicaStatus(state=serving, url=own[0].url, node=own[0].node, **base)
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
        reason = self.scheduler.failure_reason(job, state)
        return ReplicaStatus(state="failed", reason=reason, **base)

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
                if not self.exists():
                    raise DeploymentError(f"deployment {self.name!r} was stopped")
                # A replica being drained away is on its way out, not one to wait for.
                statuses = [s for s in self.status(SLURM_POLL_S) if s.state != "draining"]
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

    # ---- changing it: always under the lock, loaded fresh -------------------------------------

    def scale(self, replicas: int) -> Deployment:
        """Adds replicas at new indices or stops the highest ones; does not wait for readiness.

        A replica that routers still send requests to is drained first (they send it no new
        one) and stopped by a later pass once its requests are done. An elastic deployment's
        count stays within its bounds, and its controller moves it with the load from here.
        """
        if replicas < 0:
            raise DeploymentError(f"cannot scale {self.name!r} to {replicas} replicas")
        with self._change() as state:
            if state is None:
                raise DeploymentError(f"deployment {self.name!r} has stopped; deploy it again")
            if state.spec.autoscale is not None:
                replicas = state.spec.autoscale.clamp(replicas)
            self._apply(replace(state, spec=state.spec.with_overrides(replicas=replicas)))
        if not self._kept_by_a_controller():
            self._finish_drains()
        kept = {job.job_id for job in self.snapshot().jobs()}
        self._wait_ended([job for job in state.jobs() if job.job_id not in kept])
        return self

    def _kept_by_a_controller(self) -> bool:
        """Whether a controller (this process's thread, or one of its own) runs its passes."""
        if self._keeper_thread is not None and self._keeper_thread.is_alive():
            return True
        record = self.controller()
        return record is not None and record.dead_reason() is None

    def _finish_drains(self) -> None:
        """Runs the passes that end the drains a scale-down began, when no controller would."""
        timeout = _drain_timeout_s(self.spec) + 5
        for _ in polling(timeout, every=0.5):
            with self._change() as state:
                if state is None or all(s.draining_since is None for s in state.slots.values()):
                    return
                self._apply(state)

    def reconcile(self) -> list[str] | None:
        """One pass of keeping the deployment whole; returns what it did, for logs and tests,
        or None if no pass ran (another process holds the lock, or the deployment stopped).

        What to do comes from ``_reconcile.plan`` (replace ended jobs, give up on hopeless
        ones, hand over before wall-time, follow the desired replica count); this method only
        gathers the facts and carries the plan out.
        """
        with self._change(blocking=False) as state:
            return None if state is None else self._apply(state, autoscale=True)

    def wanted_now(self) -> bool:
        """Whether a request has come for this elastic deployment since its last pass left it
        at zero replicas: its controller then runs the next pass at once, not at the end of
        its interval. Reads the routers' reports only while it is at zero."""
        asleep_since = self._asleep_since
        if asleep_since is None:
            return False
        demand = model_demand(fresh_reports(self._home), self._spec.name)
        return demand.queued > 0 or (demand.last_request or 0.0) > asleep_since

    def record_events(self, texts: list[str]) -> None:
        """Appends events (e.g. a failed pass) under the lock, so numbers stay in order."""
        with self._locked():
            self.event_log.append(texts)

    def _apply(self, state: DeploymentState, autoscale: bool = False) -> list[str]:
        """Plans from fresh facts and carries the plan out, in the order that keeps every job
        accounted for: cancel first (a job left out of the state must not run on), then
        submit, then save the state that names the new jobs at once, then log.

        ``autoscale`` (a controller's pass): an elastic deployment's count first follows the
        demand the routers report, and its ``scaling.json`` is written after."""
        events = self._sweep_orphans(state)
        now = time.time()
        reports = fresh_reports(self._home, now)
        scaling: ScalingRecord | None = None
        bounds = state.spec.autoscale
        if autoscale and bounds is not None:
            state, scaling = self._autoscale(state, reports, now, events)
            self._asleep_since = now if state.spec.replicas == 0 else None
        drain_s = _drain_timeout_s(state.spec)
        todo = plan(state.spec.replicas, state.slots, self._facts(state, reports), now,
                    state.spec.handover_s, drain_s)  # fmt: skip
        for job in todo.cancel:
            self.scheduler.cancel(job)
        for index, job_id in todo.withdraw:
            self.registry.withdraw(self.name, index, job_id)
        for marks, draining in ((todo.drain, True), (todo.undrain, False)):
            for index, job_id in marks:
                self.registry.drain(self.name, index, job_id, draining)
        slots, events = dict(todo.slots), events + todo.events
        try:
            self._submit(state, todo, slots, events)
        finally:
            state = replace(state, slots=slots)
            self._save(state)
            self.event_log.append(events)
            if scaling is not None:
                self._publish_scaling(state, scaling, now)
        return events

    def _autoscale(
        self, state: DeploymentState, reports: list[DemandReport], now: float, events: list[str]
    ) -> tuple[DeploymentState, ScalingRecord]:
        """The state with the replica count the demand asks for (within the bounds)."""
        spec = state.spec
        assert spec.autoscale is not None
        if self._autoscaler is None or self._autoscaler.bounds != spec.autoscale:
            self._autoscaler = Autoscaler(spec.autoscale, spec.max_concurrent_requests, now)
        self._autoscaler.observe(now, model_demand(reports, spec.name))
        record = read_scaling(self.folder()) or ScalingRecord(
            deployment=self.name, model=spec.name, bounds=spec.autoscale,
            desired=spec.replicas, ready=0, written=now,
        )  # fmt: skip
        old = spec.replicas
        new, why = self._autoscaler.decide(old, now)
        if why is None:
            return state, record
        events.append(f"autoscale: {old} -> {new} replica(s): {why}")
        return replace(state, spec=spec.with_overrides(replicas=new)), record.decided(
            old, new, why, now
        )

    def _publish_scaling(self, state: DeploymentState, record: ScalingRecord, now: float) -> None:
        """``scaling.json``: bounds, desired and ready replicas, the recent decisions, and
        while it wakes, what it waits for and when it should serve, or why it cannot."""
        records = self.records(state)
        for live in records:
            if live.job_id not in record.startups_s:
                record = record.with_startup(live.job_id, live.ready - live.started)
        serving = {r.job_id for r in records if not r.draining}
        wanted = [slot for slot in state.slots.values() if slot.draining_since is None]
        ready = sum(1 for slot in wanted if slot.job.job_id in serving)
        progress, expected, failed = None, None, None
        if ready == 0 and wanted and all(slot.gave_up for slot in wanted):
            failed = "; ".join(sorted({str(slot.gave_up) for slot in wanted}))
        elif ready == 0 and state.spec.replicas > 0:
            progress, expected = self._wake_progress(wanted, record.typical_startup_s(), now)
        write_atomic(scaling_path(self.folder()), record.model_copy(update={
            "bounds": state.spec.autoscale, "desired": state.spec.replicas, "ready": ready,
            "written": time.time(), "progress": progress, "expected_ready": expected,
            "failed": failed,
        }).model_dump_json())  # fmt: skip

    def _wake_progress(
        self, slots: list[Slot], startup_s: float | None, now: float
    ) -> tuple[str, float | None]:
        """What a deployment with no ready replica waits for, and when it should serve: SLURM's
        queue (its reason and expected start) or the engine's start-up (this model's usual
        time, from earlier start-ups)."""
        refs = [slot.job for slot in slots if not slot.gave_up]
        states = self.scheduler.states(refs, SLURM_POLL_S)
        jobs = [states.get(ref.job_id, JobState("UNKNOWN")) for ref in refs]
        self._running_since = {
            ref.job_id: job.start or self._running_since.get(ref.job_id, now)
            for ref, job in zip(refs, jobs, strict=True)
            if job.state == "RUNNING"
        }
        if self._running_since:
            since = min(self._running_since.values())
            so_far = f"{now - since:.0f} s so far"
            if startup_s is None:
                return f"starting engine ({so_far})", None
            usual = f"starting engine, usually ready in ~{startup_s:.0f} s ({so_far})"
            return usual, max(since + startup_s, now + 1)
        pending = [job for job in jobs if job.state == "PENDING"]
        if not pending:
            return "submitting a replica job", None
        first = min(pending, key=lambda job: job.start or float("inf"))
        text = f"queued in SLURM: {first.reason or 'waiting'}"
        if first.start is None:
            return text, None
        text += f", expected start {time.strftime('%H:%M:%S', time.localtime(first.start))}"
        return text, max(first.start, now) + (startup_s or 0.0)

    def _submit(
        self, state: DeploymentState, todo: Plan, slots: dict[int, Slot], events: list[str]
    ) -> None:
        if not todo.submit:
            return
        try:
            new = self.scheduler.submit(state.spec, self.name, [s.index for s in todo.submit])
        except Exception as exc:
            # Nothing was submitted: the slots stay as they were, and no replacement that
            # never ran counts as a failure in a row.
            for submission in todo.submit:
                if submission.index in state.slots:
                    slots[submission.index] = state.slots[submission.index]
                else:
                    slots.pop(submission.index, None)
            events.append(f"submission failed (tried again on the next pass): {exc}")
            raise
        for submission in todo.submit:
            job = new[submission.index]
            if submission.role == "successor":
                slots[submission.index] = replace(slots[submission.index], successor=job)
                events.append(f"{submission.why} job {job.job_id}")
            elif submission.index in slots:
                slots[submission.index] = replace(slots[submission.index], job=job)
                events.append(f"{submission.why}; now served by job {job.job_id}")
            else:
                slots[submission.index] = Slot(job)
                events.append(f"{submission.why}; job {job.job_id}")

    def _sweep_orphans(self, state: DeploymentState, now: bool = False) -> list[str]:
        """Cancels live jobs of this deployment that the state does not name; under the lock,
        where every submission is saved in the same step, any such job is a leak."""
        if not now and time.monotonic() - self._last_sweep < self.sweep_every_s:
            return []
        self._last_sweep = time.monotonic()
        known = {job.job_id for job in state.jobs()}
        events = []
        for orphan in self.scheduler.orphans(self.name, known):
            self.scheduler.cancel(orphan)
            events.append(f"job {orphan.job_id} ran outside the deployment's state; cancelled")
        return events

    def _facts(self, state: DeploymentState, reports: list[DemandReport]) -> dict[str, JobFacts]:
        records = {(r.replica, r.job_id): r for r in self.registry.records(self.name)}
        states = self.scheduler.states(state.jobs())
        facts = {}
        for index, slot in state.slots.items():
            # A router's report from before it could see a drain marker says nothing of it.
            since = 0.0 if slot.draining_since is None else slot.draining_since + ROUTERS_NOTICE_S
            for job in slot.jobs():
                job_state = states.get(job.job_id, JobState("UNKNOWN"))
                record = records.get((index, job.job_id))
                deadline = record.deadline if record is not None else None
                fact = JobFacts(job_state, record is not None, deadline,
                                routed=still_routed(reports, job.job_id, since))  # fmt: skip
                if fact.ended:  # only an ended job's history matters, and it costs file reads
                    fact = replace(
                        fact,
                        was_ready=self.scheduler.was_ready(job),
                        reason=self.scheduler.failure_reason(job, job_state),
                    )
                facts[job.job_id] = fact
        return facts

    # ---- keeping it alive ---------------------------------------------------------------------

    def keep_alive(self, interval: float = 1.0) -> Deployment:
        """Reconciles from a thread of this process until ``stop()`` (or the process ends).

        For notebooks. If a controller job or process already keeps the deployment whole, the
        thread waits as its standby and takes over only if that controller dies.
        """
        if self._keeper_thread is None or not self._keeper_thread.is_alive():
            self._keeper = Controller(self, "thread", interval)
            self._keeper_thread = threading.Thread(
                target=self._keeper.run, name=f"keep-alive-{self.name}", daemon=True
            )
            self._keeper_thread.start()
        return self

    def start_controller(self, interval: float = 1.0, timeout: float = 60.0) -> ControllerRecord:
        """Starts a controller that survives this process: a SLURM job of its own, or a
        detached process without SLURM; returns once it has reconciled (its record is out),
        or once submitted if SLURM keeps its job waiting."""
        return start_controller(self, self._home, attach, self.kind == "slurm", interval,
                                timeout)  # fmt: skip

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the controller, cancels every replica, waits for the jobs to end, and forgets
        the deployment.

        The jobs are cancelled before the state that names them is removed, under the lock: an
        interrupted stop leaves nothing running that no state knows of. Controllers end on
        their next pass, finding the state gone.
        """
        self._stop_keeper()
        with self._locked():
            state = self.snapshot()
            jobs = state.jobs()
            for job in jobs:
                self.scheduler.cancel(job)
            self._sweep_orphans(state, now=True)
            self._state_path.unlink(missing_ok=True)
            scaling_path(self.folder()).unlink(missing_ok=True)  # routers forget it at once
        stop_controllers(self.folder())
        self._wait_ended(jobs, timeout)
        for record in self.registry.all_records(self.name):  # nothing of it serves any more
            self.registry.withdraw(self.name, record.replica, record.job_id)

    def start(self) -> Deployment:
        """Saves the new deployment's state and submits its replicas in one locked step; if
        SLURM refuses them, nothing is left behind. ``deploy()`` calls it."""
        with self._locked():
            if self.exists():
                raise DeploymentError(
                    f"a deployment named {self.name!r} was started meanwhile by another "
                    "process; attach to it (slurm_llm.attach) instead"
                )
            if self.event_log.path.exists():  # a former deployment's events, kept apart
                self.event_log.path.replace(self.event_log.path.with_suffix(".previous.jsonl"))
            initial = DeploymentState(self.name, self.kind, self._spec, {})
            self._save(initial)
            try:
                self._apply(initial)
            except BaseException:
                self._state_path.unlink(missing_ok=True)
                raise
        return self

    def _stop_keeper(self) -> None:
        if self._keeper is not None and self._keeper_thread is not None:
            self._keeper.stop.set()
            self._keeper_thread.join(timeout=30)

    def detach(self) -> Deployment:
        """Leaves the replicas running after this handle's ``with`` block; ``attach()`` finds
        them again from any process."""
        self._owned = False
        return self

    def _wait_ended(self, jobs: list[JobRef], timeout: float = 30.0) -> None:
        """Until SLURM (or this machine) no longer runs any of the cancelled ``jobs``."""
        if not jobs:
            return
        for _ in polling(timeout, every=0.1):
            states = self.scheduler.states(jobs, SLURM_POLL_S)
            if not any(state.active for state in states.values()):
                return

    # ---- persistence ------------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.folder() / "state.json"

    def _handle(self, job: JobRef) -> ReplicaJob:
        if isinstance(self.scheduler, SubmititScheduler):
            return self.scheduler.handle(job)
        return ReplicaJob.reattach(self.kind, Path(job.folder), job.job_id)

    @contextlib.contextmanager
    def _locked(self, blocking: bool = True) -> Iterator[bool]:
        """Holds the deployment's lock (across threads and processes)."""
        path = self.folder() / "lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _change(self, blocking: bool = True) -> Iterator[DeploymentState | None]:
        """The state, loaded fresh under the lock, for a change that saves before unlocking;
        None if the lock is busy (``blocking=False``) or the deployment has stopped."""
        with self._locked(blocking) as got:
            yield self.snapshot() if got and self.exists() else None

    def _save(self, state: DeploymentState) -> None:
        write_atomic(self._state_path, state.to_json())

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
    controller: ControllerChoice = "thread",
    keep_alive: bool | None = None,
) -> Deployment:
    """Submits ``replicas`` replicas of ``spec`` (SLURM if available, else this machine).

    If a deployment of the same name is already running (from any process), it is attached to
    and scaled to ``replicas`` instead of being doubled; its spec must match.

    ``controller`` says what replaces dead replicas and hands over before wall-time:
    ``"thread"`` (a thread of this process, for as long as it runs: notebooks, scripts),
    ``"job"`` (a controller of its own that survives this process: a small SLURM job, or a
    detached process without SLURM; started once the replicas are ready), or ``"none"``.
    """
    if keep_alive is not None:
        warnings.warn(
            "deploy(keep_alive=...) is replaced by deploy(controller='thread'|'job'|'none')",
            DeprecationWarning,
            stacklevel=2,
        )
        controller = "thread" if keep_alive else "none"
    home_path = Path(home) if home is not None else None
    name = name or spec.name.replace("/", "_")  # a served name may hold a /; a folder not
    if not SERVED_NAME.match(name) or "/" in name:
        raise DeploymentError(
            f"{name!r} cannot name a deployment (it names folders and SLURM jobs): use letters, "
            "digits and . _ : -"
        )
    count = spec.replicas if replicas is None else replicas
    if spec.autoscale is not None:
        count = spec.autoscale.clamp(count)
    existing = attach(name, home_path, missing_ok=True)
    if existing is not None and existing.has_ended():
        existing.stop()  # left over (every job ended, say after a reboot): start afresh
        existing = None
    if existing is not None:
        if existing.spec.with_overrides(replicas=count) != spec.with_overrides(replicas=count):
            raise DeploymentError(
                f"a deployment named {name!r} is already running with a different spec; stop it "
                f"(slurm-llm down {name}) or deploy under another name"
            )
        # An elastic deployment's count is its controller's to move: attach, do not rescale.
        rescale = existing.spec.replicas != count and spec.autoscale is None
        deployment = existing.scale(count) if rescale else existing
    else:
        kind = resolve_kind(executor)
        deployment = Deployment(name, spec.with_overrides(replicas=count), kind, home_path)
        deployment.start()
    if wait:
        try:
            deployment.wait_ready(timeout, progress)
        except BaseException:
            if deployment._owned:
                deployment.stop()
            raise
    if controller == "thread":
        deployment.keep_alive()
    elif controller == "job":
        record = deployment.controller()
        if record is None or record.dead_reason() is not None:
            deployment.start_controller()
    return deployment


def _drain_timeout_s(spec: ModelSpec) -> float:
    return DRAIN_TIMEOUT_S if spec.autoscale is None else spec.autoscale.drain_timeout_s


def attach(
    name: str, home: str | Path | None = None, missing_ok: bool = False
) -> Deployment | None:
    """The deployment called ``name``, or None (``missing_ok``) / an error. Reads only."""
    home_path = Path(home) if home is not None else None
    path = deployments_dir(home_path) / name / "state.json"
    try:
        state = DeploymentState.from_json(path.read_text())
    except FileNotFoundError:
        if missing_ok:
            return None
        known = ", ".join(list_deployments(home_path)) or "none"
        raise DeploymentError(f"no deployment named {name!r} (running: {known})") from None
    return Deployment(name, state.spec, state.kind, home_path, owned=False)


def list_deployments(home: str | Path | None = None) -> list[str]:
    folder = deployments_dir(Path(home) if home is not None else None)
    return sorted(p.parent.name for p in folder.glob("*/state.json"))


_STATES: tuple[ReplicaState, ...] = ("pending", "starting", "ready", "failed", "stopped")


def _describe_failures(name: str, broken: list[ReplicaStatus]) -> str:
    parts = [f"deployment {name!r}: {len(broken)} replica(s) did not start"]
    for status in broken:
        parts.append(
            f"- replica {status.replica} (job {status.job_id}) {status.state}: {status.reason}\n"
            f"  log: {status.log_path}"
        )
    return "\n".join(parts)
