"""Prometheus metrics of one router process, served at ``/metrics``.

Counters and histograms are updated as requests pass; gauges that describe the replicas
(in-flight, health, queue depth) are read from the pool and the queue at scrape time, so they
can never drift from what the router actually does. Requests for models that are not served are
counted under ``model="unknown"``: a label per invented name would let any client grow the
metrics without bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from slurm_llm.control._autoscale import ScalingRecord
from slurm_llm.router._admission import Admission
from slurm_llm.router._backends import Backend

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
        self.registry.register(ReplicaCollector(admission))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
