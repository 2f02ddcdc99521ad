"""Prometheus metrics of one router process, served at ``/metrics``.

Counters and histograms are updated as requests pass; gauges that describe the replicas
(in-flight, health, queue depth) are read from the pool and the queue at scrape time, so they
can never drift from what the router actually does. Requests for models that are not served are
counted under ``model="unknown"``: a label per invented name would let any client grow the
metrics without bound.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from slurm_llm.router._admission import Admission

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
UNKNOWN_MODEL = "unknown"


class ReplicaCollector(Collector):
    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def collect(self) -> Iterator[Metric]:
        prefix = "slurm_llm_router"
        in_flight = GaugeMetricFamily(
            f"{prefix}_replica_in_flight",
            "Requests a replica is working on.",
            labels=["model", "replica"],
        )
        limit = GaugeMetricFamily(
            f"{prefix}_replica_limit",
            "Requests a replica is sent at once.",
            labels=["model", "replica"],
        )
        healthy = GaugeMetricFamily(
            f"{prefix}_replica_healthy",
            "1 if the replica is routable.",
            labels=["model", "replica"],
        )
        answered = CounterMetricFamily(
            f"{prefix}_replica_answered",
            "Requests a replica answered.",
            labels=["model", "replica"],
        )
        queued = GaugeMetricFamily(
            f"{prefix}_queue_depth", "Requests waiting for a free replica.", labels=["model"]
        )
        now = time.monotonic()
        pool = self.admission.pool
        for backend in pool.backends.values():
            labels = [backend.model, backend.url]
            in_flight.add_metric(labels, backend.in_flight)
            limit.add_metric(labels, backend.limit)
            healthy.add_metric(labels, 1.0 if backend.routable(now) else 0.0)
            answered.add_metric(labels, backend.answered)
        for model in pool.models():
            queued.add_metric([model], len(self.admission.queues.get(model, ())))
        yield from (in_flight, limit, healthy, answered, queued)


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
            "Tokens by kind: prompt and completion from the usage of answers; a streamed answer "
            "counts one completion token per event.",
            ["model", "kind"], registry=self.registry,
        )  # fmt: skip
        self.retries = Counter(
            f"{prefix}_retries", "Requests sent again to another replica.", ["model"],
            registry=self.registry,
        )  # fmt: skip
        self.rejections = Counter(
            f"{prefix}_rejections", "Requests turned away: queue_full, queue_timeout, unhealthy.",
            ["model", "reason"], registry=self.registry,
        )  # fmt: skip
        self.tribunal_runs = Counter(
            f"{prefix}_tribunal_runs", "Tribunal runs by generator, mode (full, reduced, "
            "base-only: degraded under load) and outcome.",
            ["model", "mode", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.registry.register(ReplicaCollector(admission))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
