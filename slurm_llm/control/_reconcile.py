"""Keeping a deployment whole, as a pure function from what is known to what to do.

``plan`` sees the deployment's slots (one per replica index: the job serving it, and a
successor during a wall-time handover), what SLURM and the registry say about each job, and
the clock; it returns the slots as they should be and the jobs to cancel and submit. It does no
I/O, so every branch is unit-tested in milliseconds and property-tested against random
interleavings of job deaths, requeues, readiness and scale calls; ``Deployment`` does the I/O
around it (see ``_deployment.apply_plan`` for the order that keeps every job accounted for).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from slurm_llm.jobs._slurm_state import JobState

# Ends that say nothing about the replica itself: replace it, however young it was.
INFRASTRUCTURE_ENDS = frozenset({"CANCELLED", "NODE_FAIL", "BOOT_FAIL", "PREEMPTED", "DEADLINE"})
MAX_FAILURES_IN_A_ROW = 5

Role = Literal["job", "successor"]


@dataclass(frozen=True)
class JobRef:
    """A submitted job, as the persisted state knows it: its id and its submitit folder."""

    job_id: str
    folder: str


@dataclass(frozen=True)
class Slot:
    """One replica index: the job serving it, a successor during handover, and its history."""

    job: JobRef
    successor: JobRef | None = None
    failures: int = 0
    gave_up: str | None = None
    draining_since: float | None = None  # scaled down: finishing its requests, taking no new

    def jobs(self) -> list[JobRef]:
        return [self.job] + ([self.successor] if self.successor else [])


@dataclass(frozen=True)
class JobFacts:
    """What is known about one job at one moment.

    ``published``: it has a live registry record for its slot; ``deadline``: that record's
    wall-time end; ``routed``: a router has requests on it or may still send it one (see
    ``_demand.still_routed``); ``was_ready`` and ``reason`` matter only once the job has ended
    (whether it ever published, and why it ended).
    """

    state: JobState
    published: bool = False
    deadline: float | None = None
    routed: bool = False
    was_ready: bool = False
    reason: str = ""

    @property
    def ended(self) -> bool:
        return not self.state.active and self.state.state != "UNKNOWN"


UNKNOWN = JobFacts(JobState("UNKNOWN"))


@dataclass(frozen=True)
class Submission:
    """A job to submit for ``index``: its serving job (``job``) or a handover ``successor``."""

    index: int
    role: Role
    why: str


@dataclass(frozen=True)
class Plan:
    """The slots as they should be once ``cancel`` and ``submit`` are done.

    A submission's new job replaces ``slots[index].job`` (or creates the slot) or becomes its
    successor. ``withdraw`` lists (index, job id) records to remove: jobs that ended without
    cleaning up after themselves. ``drain`` and ``undrain`` list (index, job id) replicas whose
    drain marker to put down or take away.
    """

    slots: dict[int, Slot]
    cancel: list[JobRef] = field(default_factory=list)
    withdraw: list[tuple[int, str]] = field(default_factory=list)
    drain: list[tuple[int, str]] = field(default_factory=list)
    undrain: list[tuple[int, str]] = field(default_factory=list)
    submit: list[Submission] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def retire(self, index: int, jobs: list[JobRef]) -> None:
        """Cancel ``jobs`` of slot ``index`` and withdraw their records: a job that died
        without cleaning up may have left one, and a router would still send it traffic."""
        self.cancel.extend(jobs)
        self.withdraw.extend((index, job.job_id) for job in jobs)

    @property
    def changes(self) -> bool:
        return bool(
            self.cancel or self.withdraw or self.drain or self.undrain or self.submit or self.events
        )


def plan(
    desired: int,
    slots: Mapping[int, Slot],
    facts: Mapping[str, JobFacts],
    now: float,
    handover_s: float,
    drain_timeout_s: float = 0.0,
) -> Plan:
    """What to do so that ``desired`` replicas serve, given what is known at ``now``.

    - indices past ``desired`` are removed, highest first (scale down): a replica that routers
      still send requests to is drained first (marked, so they send it no new one) and its
      job cancelled once no router has a request on it, or after ``drain_timeout_s``; one that
      serves nobody is cancelled at once. A draining replica wanted again is kept, undrained.
      Missing indices are added after the highest index in use (scale up);
    - a job that ended is replaced (scancel, node failure, an engine past its restart limit),
      unless it failed before ever being ready: that is a spec or site problem that another job
      would repeat, so the slot is marked failed with the reason instead; so is a slot whose
      replacements keep ending (``MAX_FAILURES_IN_A_ROW``);
    - a job SLURM will never start (its pending reason says so) is cancelled and marked failed;
    - a replica whose record says its wall-time ends within ``handover_s`` gets a successor,
      and is cancelled once the successor has published.
    A job whose state is UNKNOWN (SLURM did not answer) is left alone until it is known.
    """
    result = Plan(slots={})
    kept = sorted(slots)[: max(desired, 0)]
    for index in sorted(slots):
        if index not in kept:
            _scale_down(index, slots[index], facts, now, desired, drain_timeout_s, result)
    for index in kept:
        slot = slots[index]
        if slot.draining_since is not None:
            slot = replace(slot, draining_since=None)
            result.undrain.append((index, slot.job.job_id))
            result.events.append(f"replica {index}: wanted again (scaled to {desired}); undrained")
        result.slots[index] = _keep(index, slot, facts, now, handover_s, result)
    start = kept[-1] + 1 if kept else 0
    for index in range(start, start + desired - len(kept)):
        result.submit.append(Submission(index, "job", f"replica {index}: added"))
    return result


def _scale_down(
    index: int,
    slot: Slot,
    facts: Mapping[str, JobFacts],
    now: float,
    desired: int,
    drain_timeout_s: float,
    result: Plan,
) -> None:
    """Drains slot ``index`` while a router may send it requests, then removes it."""
    if slot.successor is not None:
        # A successor that has published serves the slot now, and is the one to drain; one
        # that has not is not needed.
        slot = _advance_handover(index, slot, facts.get(slot.successor.job_id, UNKNOWN), result)
        if slot.successor is not None:
            result.retire(index, [slot.successor])
            slot = replace(slot, successor=None)
    job = facts.get(slot.job.job_id, UNKNOWN)
    routed = job.published and job.routed and not slot.gave_up
    if slot.draining_since is None:
        if routed and drain_timeout_s > 0:
            result.slots[index] = replace(slot, draining_since=now)
            result.drain.append((index, slot.job.job_id))
            result.events.append(f"replica {index}: draining (scaled to {desired})")
            return
        result.retire(index, slot.jobs())
        result.events.append(f"replica {index}: removed (scaled to {desired})")
        return
    waited = now - slot.draining_since
    if routed and waited < drain_timeout_s:
        result.slots[index] = slot
        return
    how = f"drain timed out after {waited:.0f} s" if routed else f"drained in {waited:.0f} s"
    result.retire(index, slot.jobs())
    result.events.append(f"replica {index}: removed (scaled to {desired}; {how})")


def _keep(
    index: int,
    slot: Slot,
    facts: Mapping[str, JobFacts],
    now: float,
    handover_s: float,
    result: Plan,
) -> Slot:
    """One slot's next form; appends what must be done to ``result``."""
    if slot.gave_up:
        return slot
    if slot.successor is not None:
        slot = _advance_handover(index, slot, facts.get(slot.successor.job_id, UNKNOWN), result)
    job = facts.get(slot.job.job_id, UNKNOWN)
    if job.state.hopeless:
        reason = f"SLURM will never start job {slot.job.job_id}: {job.state.reason}"
        result.retire(index, slot.jobs())
        result.events.append(f"replica {index}: {reason}; cancelled")
        return replace(slot, successor=None, gave_up=reason)
    if job.ended:
        return _replace_ended(index, slot, job, result)
    if slot.successor is None and job.published and job.deadline is not None:
        left = job.deadline - now
        # Successors that keep failing are not tried forever: the job is replaced when it ends.
        if left < handover_s and slot.failures < MAX_FAILURES_IN_A_ROW:
            why = f"replica {index}: job {slot.job.job_id} ends in {left:.0f} s; successor"
            result.submit.append(Submission(index, "successor", why))
    return slot


def _advance_handover(index: int, slot: Slot, successor: JobFacts, result: Plan) -> Slot:
    assert slot.successor is not None
    if successor.published:
        result.retire(index, [slot.job])
        result.events.append(
            f"replica {index}: successor {slot.successor.job_id} ready; retired {slot.job.job_id}"
        )
        return replace(slot, job=slot.successor, successor=None)
    if successor.state.hopeless:
        result.retire(index, [slot.successor])
        result.events.append(
            f"replica {index}: SLURM will never start successor {slot.successor.job_id}: "
            f"{successor.state.reason}; cancelled"
        )
        return replace(slot, successor=None, failures=slot.failures + 1)
    if successor.ended:
        result.withdraw.append((index, slot.successor.job_id))
        result.events.append(
            f"replica {index}: successor {slot.successor.job_id} ended ({successor.state.state})"
        )
        return replace(slot, successor=None, failures=slot.failures + 1)
    return slot


def _replace_ended(index: int, slot: Slot, dead: JobFacts, result: Plan) -> Slot:
    dead_id = slot.job.job_id
    result.withdraw.append((index, dead_id))  # it may have died without cleaning up
    if not dead.was_ready and dead.state.state not in INFRASTRUCTURE_ENDS:
        reason = f"job {dead_id} failed before it was ready: {dead.reason}"
        result.retire(index, slot.jobs()[1:])
        result.events.append(f"replica {index}: {reason}")
        return replace(slot, successor=None, gave_up=reason)
    failures = 1 if dead.was_ready else slot.failures + 1
    if failures > MAX_FAILURES_IN_A_ROW:
        reason = f"{failures - 1} replacements in a row ended; last: {dead.reason}"
        result.retire(index, slot.jobs()[1:])
        result.events.append(f"replica {index}: giving up: {reason}")
        return replace(slot, successor=None, failures=failures, gave_up=reason)
    first_line = dead.reason.splitlines()[0] if dead.reason else dead.state.state
    ended = f"replica {index}: job {dead_id} ended ({dead.state.state}: {first_line})"
    if slot.successor is not None:  # the handover successor takes over now
        result.events.append(f"{ended}; now served by job {slot.successor.job_id}")
        return replace(slot, job=slot.successor, successor=None, failures=failures)
    result.submit.append(Submission(index, "job", ended))
    return replace(slot, failures=failures)
