"""``/v1/stats``: the router's traffic over the last minutes, per model, for the console's
charts: requests, errors and tokens per second, in-flight against capacity, the queue, and
latency and time-to-first-byte percentiles; per key, requests and tokens.

It is read from the router's own Prometheus metrics, sampled every ``SAMPLE_S`` (with several
workers, their sums), so a request pays nothing for it. The sampling starts with the router
when it serves the console, else at the first ``/v1/stats``, and keeps the last ``KEEP_S``.
Rates are differences between samples; percentiles come from the histograms' bucket counts
over the ``WINDOW_S`` before each sample, interpolated within a bucket as Prometheus's
``histogram_quantile`` does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client.core import Metric

from slurm_llm.router._auth import require_sight
from slurm_llm.router._errors import RouterError
from slurm_llm.router._metering import CALLER
from slurm_llm.router._metrics import UNKNOWN_MODEL, RouterMetrics
from slurm_llm.router._routes import Routes
from slurm_llm.router._state import STATE

log = logging.getLogger("slurm_llm.router")
SAMPLE_S = 2.0
KEEP_S = 600.0
WINDOW_S = 30.0
PREFIX = "slurm_llm_router_"

# A histogram per model: its buckets' upper bounds and cumulative counts (the last is +Inf).
Buckets = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass
class Sample:
    """The metrics at one moment, per model (and per key), summed over their other labels."""

    at: float  # wall-clock seconds
    requests: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)  # answered with a 5xx
    tokens: dict[str, float] = field(default_factory=dict)
    latency: dict[str, Buckets] = field(default_factory=dict)
    first_byte: dict[str, Buckets] = field(default_factory=dict)
    in_flight: dict[str, float] = field(default_factory=dict)
    capacity: dict[str, float] = field(default_factory=dict)
    queued: dict[str, float] = field(default_factory=dict)
    key_requests: dict[str, float] = field(default_factory=dict)
    key_tokens: dict[str, float] = field(default_factory=dict)

    def models(self) -> set[str]:
        return {*self.requests, *self.capacity, *self.in_flight}


def add(totals: dict[str, float], key: str, value: float) -> None:
    totals[key] = totals.get(key, 0.0) + value


def read_sample(families: Iterable[Metric], at: float) -> Sample:
    """The figures the console charts, from a scrape's metric families."""
    sample = Sample(at)
    buckets: dict[str, dict[str, dict[float, float]]] = {"latency": {}, "first_byte": {}}
    histograms = {
        f"{PREFIX}request_duration_seconds": "latency",
        f"{PREFIX}time_to_first_byte_seconds": "first_byte",
    }
    gauges = {
        f"{PREFIX}replica_in_flight": sample.in_flight,
        f"{PREFIX}replica_limit": sample.capacity,
        f"{PREFIX}queue_depth": sample.queued,
    }
    for family in families:
        for name, labels, value in ((s.name, s.labels, s.value) for s in family.samples):
            model = labels.get("model", "")
            if name == f"{PREFIX}requests_total":
                add(sample.requests, model, value)
                if labels.get("status", "").startswith("5"):
                    add(sample.errors, model, value)
            elif name == f"{PREFIX}tokens_total":
                add(sample.tokens, model, value)
            elif name == f"{PREFIX}key_requests_total":
                add(sample.key_requests, labels["key"], value)
            elif name == f"{PREFIX}key_tokens_total":
                add(sample.key_tokens, labels["key"], value)
            elif name in gauges:
                add(gauges[name], model, value)
            elif name.endswith("_bucket") and (kind := histograms.get(name[: -len("_bucket")])):
                counts = buckets[kind].setdefault(model, {})
                bound = float(labels["le"])
                counts[bound] = counts.get(bound, 0.0) + value
    for kind, per_model in buckets.items():
        target = sample.latency if kind == "latency" else sample.first_byte
        for model, counts in per_model.items():
            bounds = tuple(sorted(counts))
            target[model] = (bounds, tuple(counts[b] for b in bounds))
    return sample


def quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float | None:
    """The ``q`` quantile of observations counted in cumulative buckets (``bounds`` ascending,
    the last +Inf), interpolated linearly within its bucket; None when there are none. One in
    the +Inf bucket is reported at the highest finite bound, as Prometheus does."""
    if not cumulative or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    below_bound, below_count = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank and count > below_count:
            if math.isinf(bound):
                return below_bound
            share = (rank - below_count) / (count - below_count)
            return below_bound + (bound - below_bound) * share
        below_bound, below_count = bound, count
    return below_bound


def window_quantile(q: float, now: Buckets | None, then: Buckets | None) -> float | None:
    """The quantile of what was observed between two samples of one histogram."""
    if now is None:
        return None
    bounds, counts = now
    before = dict(zip(*then, strict=True)) if then is not None else {}
    counted = [count - before.get(bound, 0.0) for bound, count in zip(bounds, counts, strict=True)]
    return quantile(q, bounds, counted)


def per_second(now: float, then: float, seconds: float) -> float:
    """A counter's rate; a counter that went back (a worker restarted) counts from zero."""
    return max(now - then if now >= then else now, 0.0) / seconds if seconds > 0 else 0.0


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class LoadHistory:
    """The last ``KEEP_S`` of samples, taken from the first look on."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics
        self.samples: deque[Sample] = deque(maxlen=int(KEEP_S / SAMPLE_S) + 1)
        self.task: asyncio.Task[None] | None = None

    def reading(self) -> Sample:
        """The metrics as they are now."""
        return read_sample(self.metrics.families(), time.time())

    def take(self) -> None:
        self.samples.append(self.reading())

    async def sample_forever(self) -> None:
        while True:
            try:
                self.take()
            except Exception:  # a sample lost, not the history: the next one is taken
                log.exception("cannot sample the router's metrics for /v1/stats")
            await asyncio.sleep(SAMPLE_S)

    def start(self) -> None:
        if self.task is None:  # its first sample is taken at once
            self.task = asyncio.create_task(self.sample_forever())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def series(self, minutes: float, now: Sample | None = None) -> dict[str, Any]:
        """Per model, one point per sample in the last ``minutes``: rates since the sample
        before, gauges as sampled, percentiles over the ``WINDOW_S`` before it; up to now
        (``now``, or a reading taken here), if that is over a second after the last sample."""
        samples = list(self.samples)
        if samples and time.time() - samples[-1].at >= 1.0:
            samples.append(now or self.reading())
        since = time.time() - minutes * 60
        # Requests that named no served model (and the operations' POSTs) are in /metrics as
        # model="unknown"; they have no replicas to chart.
        models = sorted({m for s in samples for m in s.models() if m and m != UNKNOWN_MODEL})
        out: dict[str, dict[str, list[Any]]] = {m: {name: [] for name in SERIES} for m in models}
        start = 0  # the first sample inside the window before the current one
        for index in range(1, len(samples)):
            now, before = samples[index], samples[index - 1]
            while samples[start].at < now.at - WINDOW_S:
                start += 1
            if now.at < since:
                continue
            then = samples[max(start - 1, 0)]  # the window: what was counted after this one
            seconds = now.at - before.at
            for model in models:
                point = out[model]
                point["t"].append(round(now.at, 3))
                for name in ("requests", "errors", "tokens"):
                    was, is_ = getattr(before, name), getattr(now, name)
                    point[f"{name}_per_s"].append(
                        rounded(per_second(is_.get(model, 0.0), was.get(model, 0.0), seconds))
                    )
                for name in ("in_flight", "capacity", "queued"):
                    point[name].append(getattr(now, name).get(model, 0.0))
                for name, histogram in (("latency", "latency"), ("ttft", "first_byte")):
                    current = getattr(now, histogram).get(model)
                    earlier = getattr(then, histogram).get(model)
                    for q in (50, 95, 99):
                        point[f"{name}_p{q}_s"].append(
                            rounded(window_quantile(q / 100, current, earlier))
                        )
        return {"sample_s": SAMPLE_S, "window_s": WINDOW_S, "models": out}

    def keys(self, minutes: float, last: Sample) -> dict[str, dict[str, float]]:
        """Requests and tokens per key in the last ``minutes``, up to ``last`` (a reading)."""
        samples = list(self.samples)
        if not samples:
            return {}
        since = time.time() - minutes * 60
        first = next((s for s in samples if s.at >= since), samples[0])
        return {
            key: {
                "requests": last.key_requests.get(key, 0.0) - first.key_requests.get(key, 0.0),
                "tokens": last.key_tokens.get(key, 0.0) - first.key_tokens.get(key, 0.0),
            }
            for key in sorted({*last.key_requests, *last.key_tokens})
        }


SERIES = (
    "t", "requests_per_s", "errors_per_s", "tokens_per_s", "in_flight", "capacity", "queued",
    "latency_p50_s", "latency_p95_s", "latency_p99_s", "ttft_p50_s", "ttft_p95_s", "ttft_p99_s",
)  # fmt: skip
HISTORY: web.AppKey[LoadHistory] = web.AppKey("load_history", LoadHistory)


async def stats(request: web.Request) -> web.Response:
    """The series; ``?minutes=`` (1 to 10, default 5); with ``?keys=1``, per key usage too
    (an operator's: it names every key)."""
    text = request.query.get("minutes", "5")
    try:
        minutes = float(text)
    except ValueError:
        minutes = math.nan
    if not 0 < minutes <= KEEP_S / 60:
        raise RouterError(400, f"minutes must be a number from 0 to {KEEP_S / 60:g}, not {text!r}",
                          param="minutes")  # fmt: skip
    history = request.app[HISTORY]
    history.start()
    if request.query.get("keys") != "1":
        return web.json_response(history.series(minutes))
    state = request.app[STATE]
    require_sight(state.callers, request.get(CALLER), "usage per key")
    now = history.reading()  # one reading of the metrics serves both answers
    return web.json_response({**history.series(minutes, now), "keys": history.keys(minutes, now)})


def add_routes(routes: Routes) -> None:
    app = routes.app
    history = app[HISTORY] = LoadHistory(app[STATE].metrics)

    async def stop(app: web.Application) -> None:
        await history.stop()

    async def begin(app: web.Application) -> None:
        history.start()

    if app[STATE].config.ui:
        app.on_startup.append(begin)
    app.on_cleanup.append(stop)
    routes.get("/v1/stats", stats)
