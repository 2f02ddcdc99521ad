"""Active deep probes: a one-token generation on every replica, every few seconds.

An engine's ``/health`` can answer 200 while its engine core is dead (vLLM does), so a probe
asks for a real token. A replica that fails ``unhealthy_after`` probes in a row stops getting
requests until it passes ``healthy_after`` in a row. A replica that answered a real request
since the last round is not probed: that answer was proof enough, and a busy replica should not
spend a slot on probes.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from slurm_llm.router._backends import Backend, BackendPool
from slurm_llm.router._upstream import UpstreamError, Upstreams


@dataclass(frozen=True)
class ProbeConfig:
    interval_s: float = 10.0  # 0 turns probes off
    timeout_s: float = 30.0  # a busy replica may take a while to fit a probe in
    unhealthy_after: int = 3
    healthy_after: int = 2


def probe_request(backend: Backend) -> tuple[str, dict[str, object]]:
    if backend.engine == "tgi":
        return "/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 1}}
    return "/v1/completions", {"model": backend.model, "prompt": "Hi", "max_tokens": 1}


async def probe(upstreams: Upstreams, backend: Backend, timeout_s: float) -> bool:
    path, body = probe_request(backend)
    try:
        status, _ = await upstreams.fetch(backend.url, path, json.dumps(body).encode(), timeout_s)
    except (TimeoutError, UpstreamError):
        return False
    return status == 200


def record_probe(backend: Backend, passed: bool, config: ProbeConfig) -> bool:
    """Counts one probe result; True when the replica's health flipped."""
    if passed:
        backend.probe_failures = 0
        backend.probe_successes += 1
        if backend.probed_down and backend.probe_successes >= config.healthy_after:
            backend.probed_down = False
            return True
    else:
        backend.probe_successes = 0
        backend.probe_failures += 1
        if not backend.probed_down and backend.probe_failures >= config.unhealthy_after:
            backend.probed_down = True
            return True
    return False


async def probe_forever(pool: BackendPool, upstreams: Upstreams, config: ProbeConfig) -> None:
    while True:
        started = time.monotonic()
        due = [
            b for b in pool.backends.values()
            if b.probed_down or b.last_success < started - config.interval_s
        ]  # fmt: skip
        results = await asyncio.gather(*(probe(upstreams, b, config.timeout_s) for b in due))
        if any([record_probe(b, passed, config) for b, passed in zip(due, results, strict=True)]):
            pool.on_change()
        await asyncio.sleep(max(0.0, config.interval_s - (time.monotonic() - started)))
