"""Everything a router can be told, with defaults that suit a small cluster."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from slurm_llm.router._policies import PolicyName
from slurm_llm.router._probes import ProbeConfig

WORKERS_VARIABLE = "SLURM_LLM_ROUTER_WORKERS"


def default_workers() -> int:
    """Router processes when nothing says how many: ``$SLURM_LLM_ROUTER_WORKERS``, or 1. A
    site sets it where its routers have cores to spare; the test suite runs the router's tests
    again with it set to 2."""
    text = os.environ.get(WORKERS_VARIABLE, "1")
    if not text.isdigit():
        raise ValueError(f"{WORKERS_VARIABLE} must be a number of workers, not {text!r}")
    return int(text)


@dataclass(frozen=True)
class RouterConfig:
    policy: PolicyName = "power-of-two"
    replica_limit: int | None = None  # requests per replica at once; None: its engine's slots
    max_queue: int = 1024  # requests waiting per model before 429
    queue_timeout_s: float = 60.0  # longest wait for a free replica before 503
    batch_aging_s: float = 30.0  # batch requests queue as if they came this much later
    interactive_reserve: int = 0  # slots per replica batch work leaves to interactive traffic
    # A request for an elastic model at zero replicas: "wait" (up to wake_timeout_s, a stream
    # with progress comments) or "reject" (a non-streamed one gets 503 with Retry-After from
    # the start-up estimate; streams still wait).
    cold_start: Literal["wait", "reject"] = "wait"
    wake_timeout_s: float = 600.0
    attempts: int = 3  # replicas tried for one non-streamed request
    deadline_s: float = 600.0  # a request's whole budget, retries included
    retry_backoff_s: float = 0.05
    connect_timeout_s: float = 5.0
    idle_stream_timeout_s: float = 120.0  # silence allowed between two chunks of a stream
    stream_failover: bool = True  # a broken stream continues on another replica (_failover)
    drain_s: float = 30.0  # at SIGTERM: how long requests in flight may take to finish
    max_body_bytes: int = 4 * 2**20
    # Processes serving the port (``_workers``), and which of them this one is: each takes its
    # share of every replica's slots and of the queue bound. 0: one per CPU of a router job.
    workers: int = field(default_factory=default_workers)
    worker: int = 0
    max_batch_items: int = 10_000
    max_file_bytes: int = 2 * 2**30  # an upload to /v1/files (streamed to disk)
    session_header: str = "X-Session-ID"  # requests with the same value go to the same replica
    prefix_affinity_chars: int = 0  # >0: the prompt's first N characters pick the replica
    api_keys: frozenset[str] = frozenset()  # plain keys; with keys_file empty: no key needed
    keys_file: Path | None = None  # named keys with limits (or plain ones), reloaded on change
    usage_dir: Path | None = None  # usage records; None: <home>/usage
    record_usage: bool = True
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    verdict_log: Path | None = None  # tribunal runs; None: <home>/tribunal/verdicts.jsonl
    ui: bool = True  # the web console at /ui (``_console``)


@dataclass(frozen=True)
class RouterSite:
    """One router's place and settings: where it listens, whose replicas it routes (a home's
    registry, one deployment's, fixed (model, URL) pairs) and how. What a worker process is
    handed, whole."""

    host: str
    port: int
    home: Path | None
    deployment: str | None
    config: RouterConfig
    static: tuple[tuple[str, str], ...] = ()
