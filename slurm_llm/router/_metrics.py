"""Prometheus metrics of one router process, served at ``/metrics``.

What every request adds (its count and duration, its tokens, its wait for a replica, its key's
share) is tallied on the hot path as one tuple in a list, and handed to the prometheus metrics
(``RouterMetrics.fold``) when they are read and once a second: a prometheus update takes a lock
and half a dozen calls, and a request made eight of them. A scrape sees every request answered
before it. Rarer events (retries, rejections, continuations) update their metric at once. Gauges
that describe the replicas
(in-flight, health, queue depth) are read from the pool and the queue at scrape time, so they
can never drift from what the router actually does. Requests for models that are not served are
counted under ``model="unknown"``: a label per invented name would let any client grow the
metrics without bound.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from bisect import bisect_right
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Self

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from slurm_llm.control._autoscale import ScalingRecord
from slurm_llm.router._admission import Admission
from slurm_llm.router._backends import Backend

log = logging.getLogger("slurm_llm.router")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
UNKNOWN_MODEL = "unknown"


Family = type[GaugeMetricFamily | CounterMetricFamily]
# Per replica, read at scrape time: (kind, name, help, value at monotonic time "now").
REPLICA_METRICS: tuple[tuple[Family, str, str, Callable[[Backend, float], float]], ...] = (
    (GaugeMetricFamily, "replica_in_flight", "Requests a replica is working on.",
     lambda b, now: b.in_flight),
    (GaugeMetricFamily, "replica_limit", "Requests a replica is sent at once.",
     lambda b, now: b.limit),
    (GaugeMetricFamily, "replica_healthy", "1 if the replica is routable.",
     lambda b, now: 1.0 if b.routable(now) else 0.0),
    (CounterMetricFamily, "replica_answered", "Requests a replica answered.",
     lambda b, now: b.answered),
)  # fmt: skip


class ElasticCollector(Collector):
    """Elastic deployments' records, the same in every worker."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def collect(self) -> Iterator[Metric]:
        return elastic_metrics(self.admission.pool.elastic.values())


class ReplicaCollector(Collector):
    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()
        pool = self.admission.pool
        for kind, name, text, value in REPLICA_METRICS:
            family = kind(f"slurm_llm_router_{name}", text, labels=["model", "replica"])
            for backend in pool.backends.values():
                family.add_metric([backend.model, backend.url], value(backend, now))
            yield family
        queued = GaugeMetricFamily(
            "slurm_llm_router_queue_depth", "Requests waiting for a free replica.", labels=["model"]
        )
        for model in pool.models():
            queued.add_metric([model], len(self.admission.queues.get(model, ())))
        yield queued
        yield from elastic_metrics(pool.elastic.values())


def elastic_metrics(records: Iterable[ScalingRecord]) -> Iterator[Metric]:
    """Elastic deployments, as their controllers last wrote them (``scaling.json``)."""
    labels = ["deployment", "model"]
    desired = GaugeMetricFamily(
        "slurm_llm_deployment_replicas_desired", "Replicas its autoscaler wants.", labels=labels
    )
    ready = GaugeMetricFamily(
        "slurm_llm_deployment_replicas_ready", "Replicas that serve.", labels=labels
    )
    events = CounterMetricFamily(
        "slurm_llm_deployment_scale_events", "Autoscaling decisions, by direction: up, down.",
        labels=[*labels, "direction"],
    )  # fmt: skip
    for record in records:
        names = [record.deployment, record.model]
        desired.add_metric(names, record.desired)
        ready.add_metric(names, record.ready)
        events.add_metric([*names, "up"], record.scale_ups)
        events.add_metric([*names, "down"], record.scale_downs)
    yield from (desired, ready, events)


class KeptChildren:
    """``labels()`` that keeps each child it made: prometheus-client's checks the label values
    and takes a lock on every call, a cost per request (and per streamed chunk) that the hot
    path need not pay once a label set has been seen."""

    def labels(self, *values: object, **named: object) -> Self:
        kept: dict[tuple[object, ...], Self] = self.__dict__.setdefault("_kept", {})
        child = kept.get(values) if not named else None
        if child is None:
            child = super().labels(*values, **named)  # type: ignore[misc]
            if not named:
                kept[values] = child
        return child  # type: ignore[no-any-return]


class Counter(KeptChildren, prometheus_client.Counter):
    pass


class Histogram(KeptChildren, prometheus_client.Histogram):
    def observe_many(self, amounts: list[float]) -> None:
        """``observe`` for each of ``amounts``, with one update per bucket touched. It uses
        prometheus-client's own fields, as ``observe`` does; a test holds the two equal."""
        self._raise_if_not_observable()  # type: ignore[no-untyped-call]
        self._sum.inc(math.fsum(amounts))
        ordered = sorted(amounts)  # then one search per bucket, not one per amount
        below = 0  # amounts in the buckets before this one: ``observe``'s ``amount <= bound``
        for bucket, bound in enumerate(self._upper_bounds):
            upto = bisect_right(ordered, bound)
            if upto > below:
                self._buckets[bucket].inc(upto - below)
                below = upto


def observe_by_model(histogram: Histogram, observed: list[tuple[str, float]]) -> None:
    """Observations given as (model, amount), each model's handed over at once."""
    grouped: defaultdict[str, list[float]] = defaultdict(list)
    for model, amount in observed:
        grouped[model].append(amount)
    for model, amounts in grouped.items():
        histogram.labels(model).observe_many(amounts)


def workers_folder() -> str | None:
    """prometheus-client's multiprocess folder, set where several workers serve one port."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


class SharedReplicaGauges:
    """With several workers, the per-replica gauges are each worker's own: each writes them
    to the multiprocess folder once a second (``write``), where a scrape sums them (in-flight,
    slots, queue depth; healthy is the best of the workers' views, answered a counter). They
    lag by up to a second. A replica that leaves stays, at 0, until the router restarts."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        labels = ["model", "replica"]
        prefix = "slurm_llm_router"
        self.gauges = {
            name: prometheus_client.Gauge(
                f"{prefix}_{name}",
                text,
                labels,
                registry=None,
                multiprocess_mode="livemax" if name == "replica_healthy" else "livesum",
            )
            for kind, name, text, _ in REPLICA_METRICS
            if kind is GaugeMetricFamily
        }
        self.answered = prometheus_client.Counter(
            f"{prefix}_replica_answered", "Requests a replica answered.", labels, registry=None
        )
        self.queued = prometheus_client.Gauge(
            f"{prefix}_queue_depth", "Requests waiting for a free replica.", ["model"],
            registry=None, multiprocess_mode="livesum",
        )  # fmt: skip
        self._answered: dict[tuple[str, str | None], int] = {}  # by (url, job): last written
        self._shown: set[tuple[str, str]] = set()
        self._models: set[str] = set()

    def write(self) -> None:
        now = time.monotonic()
        pool = self.admission.pool
        shown = set()
        answered: dict[tuple[str, str | None], int] = {}
        for backend in pool.backends.values():
            labels = (backend.model, backend.url)
            shown.add(labels)
            for _, name, _, value in REPLICA_METRICS:
                if name in self.gauges:
                    self.gauges[name].labels(*labels).set(value(backend, now))
            # By job: a new job at an old address is a new backend, counting from 0 again.
            job = (backend.url, backend.job)
            self.answered.labels(*labels).inc(backend.answered - self._answered.get(job, 0))
            answered[job] = backend.answered
        for labels in self._shown - shown:
            for gauge in self.gauges.values():
                gauge.labels(*labels).set(0)
        self._shown = shown
        self._answered = answered
        models = set(pool.models())
        for model in models | self._models:
            self.queued.labels(model).set(len(self.admission.queues.get(model, ())))
        self._models = models


class RouterMetrics:
    def __init__(self, admission: Admission) -> None:
        self.registry = CollectorRegistry()
        prefix = "slurm_llm_router"
        self.requests = Counter(
            f"{prefix}_requests", "Requests answered, by model, endpoint and status.",
            ["model", "endpoint", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            f"{prefix}_request_duration_seconds", "Time from request to the last byte sent.",
            ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.first_byte = Histogram(
            f"{prefix}_time_to_first_byte_seconds", "Time to the first streamed byte.",
            ["model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.queue_wait = Histogram(
            f"{prefix}_queue_wait_seconds", "Time requests waited for a free replica.",
            ["model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.tokens = Counter(
            f"{prefix}_tokens",
            "Tokens by kind: prompt and completion from the usage of answers; a stream counts "
            "one completion token per event relayed.",
            ["model", "kind"], registry=self.registry,
        )  # fmt: skip
        self.retries = Counter(
            f"{prefix}_retries", "Requests sent again to another replica.", ["model"],
            registry=self.registry,
        )  # fmt: skip
        self.request_faults = Counter(
            f"{prefix}_request_faults", "Requests refused again after a 5xx (a 4xx or a 500): "
            "the request's fault; answered with the engine's error, no replica ejected.",
            ["model", "status"], registry=self.registry,
        )  # fmt: skip
        self.continuations = Counter(
            f"{prefix}_stream_continuations", "Streams whose replica broke off mid-stream, by "
            "outcome: continued (on another replica), not_continuable, no_replica, request_fault "
            "(two replicas ended it with an error event of their own), client_left (while the "
            "continuation waited for a replica).",
            ["model", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.rejections = Counter(
            f"{prefix}_rejections",
            "Requests turned away: queue_full, queue_timeout, unhealthy, no_replica, key_limit, "
            "wake_timeout, wake_failed, cold_start.",
            ["model", "reason"], registry=self.registry,
        )  # fmt: skip
        # Labelled by the key's name from the keys file: the operator bounds the label set,
        # never a client (an unknown key is refused before it is counted).
        self.key_requests = Counter(
            f"{prefix}_key_requests", "Model requests per key name and answer status.",
            ["key", "status"], registry=self.registry,
        )  # fmt: skip
        self.key_tokens = Counter(
            f"{prefix}_key_tokens", "Tokens per key name, by kind: prompt, completion.",
            ["key", "kind"], registry=self.registry,
        )  # fmt: skip
        self.tribunal_runs = Counter(
            f"{prefix}_tribunal_runs", "Tribunal runs by generator, mode (full, reduced, "
            "base-only: degraded under load) and outcome.",
            ["model", "mode", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.cold_starts = Counter(
            f"{prefix}_cold_starts", "Requests that arrived for a model with no replica "
            "(an elastic deployment scaled to zero), each of which wakes it.",
            ["model"], registry=self.registry,
        )  # fmt: skip
        # The hot path's tallies, handed over by ``fold`` (all on the event loop's thread).
        self._answers: list[tuple[str, str, int, float]] = []  # model, endpoint, status, s
        self._tokens: list[tuple[str, int, int]] = []  # model, prompt, completion
        self._waits: list[tuple[str, float]] = []  # model, seconds waited for a replica
        self._first_bytes: list[tuple[str, float]] = []  # model, seconds to a stream's first
        self._keys: list[tuple[str, int, int, int]] = []  # key, status, prompt, completion
        self.shared: SharedReplicaGauges | None = None
        if workers_folder():
            self.shared = SharedReplicaGauges(admission)
            self.registry.register(ElasticCollector(admission))
        else:
            self.registry.register(ReplicaCollector(admission))

    def answered(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        """A request answered: ``requests`` and ``request_duration_seconds``."""
        self._answers.append((model, endpoint, status, seconds))

    def used(self, model: str, prompt: int, completion: int) -> None:
        """Tokens of an answer (or of a stream's events): ``tokens``."""
        self._tokens.append((model, prompt, completion))

    def waited(self, model: str, seconds: float) -> None:
        """A request's wait for a replica: ``queue_wait_seconds``."""
        self._waits.append((model, seconds))

    def first_byte_after(self, model: str, seconds: float) -> None:
        """A stream's first byte: ``time_to_first_byte_seconds``."""
        self._first_bytes.append((model, seconds))

    def key_used(self, key: str, status: int, prompt: int, completion: int) -> None:
        """A model request of a key (``-``: no key): ``key_requests`` and ``key_tokens``."""
        self._keys.append((key, status, prompt, completion))

    def fold(self) -> None:
        """Hands the tallies to the prometheus metrics: counts summed per label set, each
        histogram's observations per label set at once."""
        answers, self._answers = self._answers, []
        tokens, self._tokens = self._tokens, []
        waits, self._waits = self._waits, []
        first_bytes, self._first_bytes = self._first_bytes, []
        keys, self._keys = self._keys, []
        by_status: defaultdict[tuple[str, str, int], list[float]] = defaultdict(list)
        for model, endpoint, status, seconds in answers:
            by_status[model, endpoint, status].append(seconds)
        by_route: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
        for (model, endpoint, status), seconds_each in by_status.items():
            self.requests.labels(model, endpoint, str(status)).inc(len(seconds_each))
            by_route[model, endpoint] += seconds_each
        for route, seconds_each in by_route.items():
            self.latency.labels(*route).observe_many(seconds_each)
        observe_by_model(self.queue_wait, waits)
        observe_by_model(self.first_byte, first_bytes)
        used: Tally[tuple[str, str]] = Tally()
        for model, prompt, completion in tokens:
            used[model, "prompt"] += prompt
            used[model, "completion"] += completion
        for labels, count in used.items():
            if count > 0:
                self.tokens.labels(*labels).inc(count)
        requests_by_key: Tally[tuple[str, int]] = Tally()
        by_key: Tally[tuple[str, str]] = Tally()
        for key, status, prompt, completion in keys:
            requests_by_key[key, status] += 1
            by_key[key, "prompt"] += prompt
            by_key[key, "completion"] += completion
        for (key, status), count in requests_by_key.items():
            self.key_requests.labels(key, str(status)).inc(count)
        for labels, count in by_key.items():
            self.key_tokens.labels(*labels).inc(count)

    def exposition(self) -> bytes:
        """The metrics text; with several workers, theirs summed (``_workers``)."""
        return generate_latest(self.readable())

    def families(self) -> Iterable[Metric]:
        """Every metric's current values, as a scrape would read them (``_load_history``)."""
        return self.readable().collect()

    def readable(self) -> CollectorRegistry:
        """This process's registry; with several workers, one that sums theirs."""
        self.fold()
        if self.shared is None:
            return self.registry
        self.shared.write()
        summed = CollectorRegistry()
        MultiProcessCollector(summed)  # type: ignore[no-untyped-call]
        summed.register(ElasticCollector(self.shared.admission))
        return summed

    async def publish_forever(self) -> None:
        """The tallies folded once a second, so that they never hold more than a second of
        requests; with several workers, this one's replica gauges written too (the others'
        tallies are up to a second behind in a scrape that one worker answers)."""
        while True:
            try:
                self.fold()
                if self.shared is not None:
                    self.shared.write()
            except Exception:  # one bad hand-over must not end the publishing
                log.exception("cannot hand the request metrics to prometheus")
            await asyncio.sleep(1.0)
