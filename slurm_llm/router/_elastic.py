"""The router's side of elastic deployments: what it tells their controllers, and what it
tells the clients that wait for them.

Once a second (and at once when a request arrives for a model with no replica) the router
writes its demand report (``_demand``) and reads the controllers' ``scaling.json`` files into
the pool, which keeps a model at zero replicas known (listed, admitted, wakeable). A client
that waits for a model to wake is told the truth: a stream gets SSE comment lines with what the
controller last said (``queued in SLURM: Priority, expected start 14:02``, ``starting engine,
usually ready in ~40 s``, then ``ready``); a non-streamed request, under ``cold_start="reject"``,
gets a 503 whose ``Retry-After`` comes from the same estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from pathlib import Path

from slurm_llm._demand import DemandReport, ModelDemand, remove_report, router_id, write_report
from slurm_llm.control._autoscale import ScalingRecord, scaling_records
from slurm_llm.router._admission import Admission, Rejected
from slurm_llm.router._backends import BackendPool
from slurm_llm.router._metrics import RouterMetrics
from slurm_llm.router._streams import ClientStream

log = logging.getLogger("slurm_llm.router")
REPORT_EVERY_S = 1.0
PROGRESS_EVERY_S = 0.5  # how often a waiting stream looks for news
KEEPALIVE_S = 10.0  # an unchanged progress line is sent again this often, to keep proxies open
UNKNOWN_STARTUP_S = 60  # what Retry-After says of a model never started here before


class ElasticLink:
    """Writes this router's demand report and reads the elastic deployments' records."""

    def __init__(
        self, pool: BackendPool, admission: Admission, metrics: RouterMetrics, home: Path | None
    ) -> None:
        self.pool = pool
        self.admission = admission
        self.metrics = metrics
        self.home = home
        self.router = router_id()
        self._nudge: asyncio.Event | None = None  # made on the event loop, in run()
        self._stopped = False  # run() ended: a report still being written is removed again
        admission.on_wake = self.woken

    def woken(self, model: str) -> None:
        """A request arrived for a model with no replica: report it now, not within a second."""
        self.metrics.cold_starts.labels(model).inc()
        if self._nudge is not None:
            self._nudge.set()

    def report(self) -> DemandReport:
        in_flight: Counter[str] = Counter()
        for backend in self.pool.backends.values():  # draining ones too: their answers count
            in_flight[backend.model] += backend.in_flight
        queues, arrivals = self.admission.queues, self.admission.last_request
        models = {
            model: ModelDemand(in_flight=in_flight[model], queued=len(queues.get(model, ())),
                               last_request=arrivals.get(model))
            for model in {*in_flight, *queues, *arrivals}
        }  # fmt: skip
        jobs = [b for b in self.pool.backends.values() if b.job is not None]
        return DemandReport(
            router=self.router, written=time.time(), models=models,
            busy_jobs={b.job: b.in_flight for b in jobs if b.job and b.in_flight},
            routed_jobs=[b.job for b in jobs if b.job and not b.draining],
        )  # fmt: skip

    async def run(self) -> None:
        """Until cancelled; a round that fails (a full disk, a stale NFS handle) is logged
        and tried again: controllers must never stop hearing of this router's requests."""
        self._nudge = asyncio.Event()
        try:
            while True:
                try:
                    await self._exchange()
                except Exception:
                    log.exception("could not exchange demand and scaling records; retrying")
                # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
                # that comes as the nudge does, and this task then never ended (a router's
                # stop hung for good, seen in CI).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REPORT_EVERY_S):
                        await self._nudge.wait()
                self._nudge.clear()
        finally:
            self._stopped = True
            with contextlib.suppress(OSError):
                remove_report(self.home, self.router)  # gone at once, not after going stale

    async def _exchange(self) -> None:
        """Reads the controllers' records, gives up on requests nothing will wake, and
        writes this router's report."""
        records = await asyncio.to_thread(scaling_records, self.home, self.pool.deployment)
        self.pool.elastic = records
        self.admission.abandon_hopeless_wakes(self.pool.wake_problem)
        await asyncio.to_thread(self._write_report, self.report())

    def _write_report(self, report: DemandReport) -> None:
        """In a thread, which a stop does not wait for: a router stopped while it wrote (its
        ``run`` cancelled in the await, the report removed) must not leave the report behind,
        where controllers would count its demand until it went stale. Whichever of this
        write and the stop's removal comes last, the last thing done is a removal."""
        write_report(self.home, report)
        if self._stopped:
            remove_report(self.home, self.router)


def waiting_for(record: ScalingRecord | None) -> str:
    """What a request for a model with no replica waits for, in the controller's words."""
    if record is None:
        return "waiting for a replica"
    if record.progress:
        return record.progress
    if record.desired == 0:
        return "scaled to zero: asking its controller for a replica"
    return "waiting for a replica to start"


def seconds_until_ready(record: ScalingRecord | None, now: float | None = None) -> int:
    """Retry-After for a model that wakes: until its expected readiness, or its usual start-up."""
    now = time.time() if now is None else now
    if record is not None and record.expected_ready is not None:
        return max(1, round(record.expected_ready - now))
    typical = record.typical_startup_s() if record is not None else None
    return max(1, round(typical)) if typical is not None else UNKNOWN_STARTUP_S


def refuse_cold_start(pool: BackendPool, admission: Admission, model: str) -> Rejected:
    """The 503 for a non-streamed request under ``cold_start="reject"``; the request still
    counts as demand (so the model wakes) and is reported at once."""
    admission.last_request[model] = time.time()
    admission.on_wake(model)
    record = pool.elastic.get(model)
    return Rejected(
        503,
        f"{model!r} has no replica running; one is starting ({waiting_for(record)}); retry "
        "after the time in Retry-After",
        "cold_start",
        retry_after=seconds_until_ready(record),
    )


async def tell_progress(stream: ClientStream, pool: BackendPool, model: str) -> None:
    """Sends the waiting stream what the wake-up waits for, as SSE comments, until cancelled
    (once a replica takes the request, whose relay then says ``ready``)."""
    said, said_at = "", 0.0
    while not stream.replicas:
        text = waiting_for(pool.elastic.get(model))
        if text != said or time.monotonic() - said_at >= KEEPALIVE_S:
            if not await stream.comment(text):
                return
            said, said_at = text, time.monotonic()
        await asyncio.sleep(PROGRESS_EVERY_S)
