"""How many replicas an elastic deployment should have, from the demand routers report.

The signal is utilisation: requests in flight and queued (summed over the routers' reports)
over the slots of the replicas wanted now, averaged over ``window_s``. The controller samples it
once a pass and ``Autoscaler.decide`` turns the samples into a count:

- **wake**: a deployment at zero replicas gets one (or more, for a crowd) as soon as a request
  arrives, without waiting for the window: someone is waiting for it. While no replica serves
  (requests queued, none in flight: it wakes, or every replica failed) the crowd still sets the
  count: the requests that arrive while the first replica starts get theirs started at once,
  not a window after it serves;
- **up** once the samples cover a whole window, to the replicas that bring the window's
  average to the target;
- **down** only to the most replicas any moment of the last ``scale_down_after_s`` needed, and
  needed with a margin: a replica goes only if the rest would run below ``DOWN_BAND`` of the
  target. Demand that hovers at the target between n and n + 1 replicas then keeps n + 1,
  where a single threshold would add and remove a replica with every burst (flapping); the
  replica that goes is drained first (``_reconcile.plan``);
- **idle**: unused for ``idle_s`` (no request arrived, none was in flight), and it shrinks to
  ``min_replicas``.

It holds its samples in memory, so it does no I/O and is unit- and property-tested on its own;
a controller that restarts starts with no history, which only delays a scale-down.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from slurm_llm._demand import ModelDemand
from slurm_llm._paths import deployments_dir
from slurm_llm.spec._model_spec import Autoscale

DECISIONS_KEPT = 20
DOWN_BAND = 0.8  # scale down only to replicas that would run below 80 % of the target
STARTUPS_KEPT = 10


@dataclass(frozen=True)
class Sample:
    at: float
    requests: int  # in flight and queued, over all routers
    waiting: bool  # requests queued and none in flight: no replica serves them yet
    need: int  # replicas the window's average needed at this moment
    keep: int  # replicas to keep for it: its need within the scale-down band


class Autoscaler:
    """One deployment's scaling decisions, from its demand samples (wall-clock times)."""

    def __init__(self, bounds: Autoscale, slots: int, started: float) -> None:
        """``slots``: requests one replica takes at once; ``started``: since when it has been
        watched (a deployment that never saw a request counts as idle from then)."""
        self.bounds = bounds
        self.slots = slots
        self.started = started
        self.samples: deque[Sample] = deque()
        # The last sign of use: a request's arrival, or a moment with one in flight (a long
        # answer keeps it in use after its request arrived).
        self.last_used: float | None = None

    def observe(self, now: float, demand: ModelDemand) -> None:
        used = [t for t in (self.last_used, demand.last_request) if t is not None]
        if demand.requests:
            used.append(now)
        self.last_used = max(used) if used else None
        horizon = now - max(self.bounds.window_s, self.bounds.scale_down_after_s)
        # One sample at or before the horizon stays: it shows how long demand has been watched.
        while len(self.samples) > 1 and self.samples[1].at <= horizon:
            self.samples.popleft()
        window = [s.requests for s in self.samples if s.at > now - self.bounds.window_s]
        mean = statistics.fmean([*window, demand.requests])
        target = self.slots * self.bounds.target_utilisation
        need, keep = math.ceil(mean / target), math.ceil(mean / (target * DOWN_BAND))
        waiting = demand.queued > 0 and demand.in_flight == 0
        if waiting:
            # The window is mostly the quiet before: a crowd that waits now sets the count, and
            # keeps it (a scale-down must not undo the replicas it asked for a pass later).
            crowd = math.ceil(demand.requests / target)
            need, keep = max(need, crowd), max(keep, crowd)
        self.samples.append(Sample(now, demand.requests, waiting, need, keep))

    def decide(self, desired: int, now: float) -> tuple[int, str | None]:
        """The replicas to have, and why they change (None: they do not)."""
        bounds = self.bounds
        latest = self.samples[-1] if self.samples else Sample(now, 0, False, 0, 0)
        quiet_for = now - (self.last_used or self.started)
        if latest.requests == 0 and quiet_for >= bounds.idle_s:
            if desired > bounds.min_replicas:
                return bounds.min_replicas, f"unused for {quiet_for:.0f} s"
            return desired, None
        asked = latest.requests > 0 or (self.last_used is not None and quiet_for < bounds.idle_s)
        if desired == 0 and not asked:
            return desired, None  # it started at zero, and nobody has asked for it yet
        need = bounds.clamp(max(latest.need, 1))  # requests come: never zero
        if desired == 0 or latest.waiting:
            waiting = f"{latest.requests} request(s) waiting" if latest.requests else "a request"
            if desired == 0:
                return need, f"woken by {waiting}"
            if need > desired:
                return need, f"{waiting} and no replica serving"
        if need > desired and self._watched_for(bounds.window_s, now):
            return need, (
                f"{self._utilisation(desired, now):.0%} of {desired} replica(s)' slots in use "
                f"over {bounds.window_s:g} s (target {bounds.target_utilisation:.0%})"
            )
        settled = now - bounds.scale_down_after_s
        if need < desired and self._watched_for(bounds.scale_down_after_s, now):
            most = max(s.keep for s in self.samples if s.at >= settled)
            enough = bounds.clamp(max(most, 1))
            if enough < desired:
                return enough, (
                    f"{self._utilisation(desired, now):.0%} of {desired} replica(s)' slots in "
                    f"use; {enough} suffice(s) for the last {bounds.scale_down_after_s:g} s"
                )
        return desired, None

    def _watched_for(self, seconds: float, now: float) -> bool:
        """Whether the samples cover the last ``seconds``: demand that *stays* high or low,
        not one moment (a controller that just started waits before it scales)."""
        return bool(self.samples) and self.samples[0].at <= now - seconds

    def _utilisation(self, replicas: int, now: float) -> float:
        window = [s.requests for s in self.samples if s.at > now - self.bounds.window_s]
        return statistics.fmean(window or [0]) / (replicas * self.slots)


class ScalingRecord(BaseModel):
    """``scaling.json``: an elastic deployment as its controller last saw it, for routers (which
    keep a model at zero replicas listed, and wake it) and for ``slurm-llm status``."""

    deployment: str
    model: str
    bounds: Autoscale
    desired: int
    ready: int
    written: float
    decisions: list[str] = []  # the most recent, oldest first: "HH:MM:SS 0 -> 1: why"
    scale_ups: int = 0
    scale_downs: int = 0
    # While it wakes: what it waits for, and when it should serve; or why it cannot.
    progress: str | None = None
    expected_ready: float | None = None
    failed: str | None = None
    startups_s: dict[str, float] = {}  # job -> seconds its engine took to serve, latest last

    def decided(self, old: int, new: int, why: str, now: float) -> ScalingRecord:
        stamp = time.strftime("%H:%M:%S", time.localtime(now))
        return self.model_copy(
            update={
                "decisions": [*self.decisions, f"{stamp} {old} -> {new}: {why}"][-DECISIONS_KEPT:],
                "scale_ups": self.scale_ups + (new > old),
                "scale_downs": self.scale_downs + (new < old),
            }
        )

    def typical_startup_s(self) -> float | None:
        """The median of the recorded start-ups: what a waiting client is told to expect."""
        return statistics.median(self.startups_s.values()) if self.startups_s else None

    def with_startup(self, job_id: str, seconds: float) -> ScalingRecord:
        startups = {**self.startups_s, job_id: round(seconds, 1)}
        return self.model_copy(update={"startups_s": dict(list(startups.items())[-STARTUPS_KEPT:])})


def scaling_path(folder: Path) -> Path:
    return folder / "scaling.json"


def read_scaling(folder: Path) -> ScalingRecord | None:
    try:
        return ScalingRecord.model_validate_json(scaling_path(folder).read_bytes())
    except (FileNotFoundError, ValidationError):
        return None


def scaling_records(
    home: Path | None = None, deployment: str | None = None
) -> dict[str, ScalingRecord]:
    """Elastic deployments' records (of ``deployment`` only, if named), by served model name."""
    found = {}
    for path in sorted(deployments_dir(home).glob(f"{deployment or '*'}/scaling.json")):
        record = read_scaling(path.parent)
        if record is not None:
            found[record.model] = record
    return found
