"""The router's view of the replicas: read from the endpoint registry, chosen by load.

Backends come and go with registry records (re-read twice a second), so a replica is routed to
as soon as its launcher publishes and forgotten as soon as it withdraws or goes stale. Choice is
"power of two choices" on outstanding requests: pick two healthy replicas of the model at random
and send to the less loaded one, which avoids the herd that pure least-loaded causes when many
requests arrive between load updates. A replica that refuses a connection or answers 5xx is
ejected for a short, growing time (passive health), so retries go elsewhere.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Collection
from dataclasses import dataclass

from slurm_llm._registry import Registry

EJECT_BASE_S = 1.0
EJECT_MAX_S = 30.0


@dataclass
class Backend:
    url: str
    model: str
    in_flight: int = 0
    failures: int = 0
    ejected_until: float = 0.0
    answered: int = 0  # requests this replica answered, for balancing checks and metrics

    def healthy(self, now: float) -> bool:
        return now >= self.ejected_until

    def failed(self) -> None:
        """Passive ejection with exponential back-off: 1 s, 2 s, 4 s, ... up to 30 s."""
        self.failures += 1
        backoff = min(EJECT_BASE_S * 2 ** (self.failures - 1), EJECT_MAX_S)
        self.ejected_until = time.monotonic() + backoff

    def succeeded(self) -> None:
        self.answered += 1
        self.failures = 0
        self.ejected_until = 0.0


class BackendPool:
    """Backends per model, kept in step with the registry."""

    def __init__(self, registry: Registry, deployment: str | None = None) -> None:
        self.registry = registry
        self.deployment = deployment
        self.backends: dict[str, Backend] = {}  # by url

    def refresh(self) -> None:
        records = self.registry.records(self.deployment)
        live = {record.url: record.model for record in records}
        for url in list(self.backends):
            if url not in live:
                del self.backends[url]
        for url, model in live.items():
            if url not in self.backends or self.backends[url].model != model:
                self.backends[url] = Backend(url, model)

    async def watch(self, interval: float = 0.5) -> None:
        while True:
            await asyncio.to_thread(self.refresh)
            await asyncio.sleep(interval)

    def models(self) -> list[str]:
        return sorted({backend.model for backend in self.backends.values()})

    def choose(self, model: str, exclude: Collection[str] = ()) -> Backend | None:
        now = time.monotonic()
        candidates = [
            b for b in self.backends.values()
            if b.model == model and b.url not in exclude and b.healthy(now)
        ]  # fmt: skip
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        first, second = random.sample(candidates, 2)
        return first if first.in_flight <= second.in_flight else second
