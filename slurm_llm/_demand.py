"""What routers see of demand, for the controllers that scale deployments to it.

Each router writes one report, ``<home>/demand/<host>-<pid>-<random>.json``, about once a
second and at once when a request arrives for a model that has no replica: per model, the
requests in flight and waiting and when the last one arrived; per replica job, the requests in
flight on it, and which jobs it would still send a new request to (not those it has seen a
drain marker for). A controller sums the reports that are fresh; a router that died leaves a
report that goes stale and stops counting.

Both sides reach ``<home>`` (the shared filesystem), so no address or port has to be found,
and a controller that restarts reads the same reports again. The file is the one link; the
router does not know the controllers, nor they the router.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

from pydantic import BaseModel, ValidationError

from slurm_llm._files import write_atomic
from slurm_llm._paths import home_dir

STALE_AFTER_S = 10.0  # a report older than this is from a router that is gone or stuck
FORGOTTEN_AFTER_S = 3600.0  # a report this old (a router killed outright) is removed


class ModelDemand(BaseModel):
    """One model's demand as one router (or all of them, summed) sees it."""

    in_flight: int = 0
    queued: int = 0  # waiting in the router's queue, for a free slot or for the model to wake
    last_request: float | None = None  # wall-clock time the last request for it arrived

    @property
    def requests(self) -> int:
        return self.in_flight + self.queued

    def plus(self, other: ModelDemand) -> ModelDemand:
        times = [t for t in (self.last_request, other.last_request) if t is not None]
        return ModelDemand(
            in_flight=self.in_flight + other.in_flight,
            queued=self.queued + other.queued,
            last_request=max(times) if times else None,
        )


class DemandReport(BaseModel):
    """One router's report."""

    router: str
    written: float
    models: dict[str, ModelDemand] = {}
    busy_jobs: dict[str, int] = {}  # job id -> requests in flight on that replica
    routed_jobs: list[str] = []  # jobs it would send a new request to (known, not draining)


def demand_dir(home: Path | None = None) -> Path:
    return home_dir(home) / "demand"


def router_id() -> str:
    """Unique per router: two routers in one process (a notebook, a test) must not share a
    report, or one's exit would remove the other's."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def report_path(home: Path | None, router: str) -> Path:
    return demand_dir(home) / f"{router}.json"


def write_report(home: Path | None, report: DemandReport) -> None:
    write_atomic(report_path(home, report.router), report.model_dump_json())


def remove_report(home: Path | None, router: str) -> None:
    report_path(home, router).unlink(missing_ok=True)


def fresh_reports(home: Path | None = None, now: float | None = None) -> list[DemandReport]:
    """The reports of routers that are alive (written within ``STALE_AFTER_S``); one left by a
    router killed long ago is removed. Routers and controllers compare their wall clocks here,
    so their hosts' clocks must agree to a few seconds (NTP, as SLURM needs too)."""
    now = time.time() if now is None else now
    reports = []
    for path in sorted(demand_dir(home).glob("*.json")):
        try:
            report = DemandReport.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            continue  # removed meanwhile, unreadable, or torn by a dying writer: skip it
        if now - report.written <= STALE_AFTER_S:
            reports.append(report)
        elif now - report.written > FORGOTTEN_AFTER_S:
            path.unlink(missing_ok=True)
    return reports


def model_demand(reports: list[DemandReport], model: str) -> ModelDemand:
    """``model``'s demand summed over the routers' reports."""
    total = ModelDemand()
    for report in reports:
        if model in report.models:
            total = total.plus(report.models[model])
    return total


def still_routed(reports: list[DemandReport], job_id: str, since: float = 0.0) -> bool:
    """Whether some router still has requests on job ``job_id``, or may still send it one (it
    has not yet seen the job's drain marker). A report written before ``since`` (before the
    router could have seen the marker) counts as routing to it."""
    return any(
        report.written < since
        or report.busy_jobs.get(job_id, 0) > 0
        or job_id in report.routed_jobs
        for report in reports
    )
