"""Which free replica gets a request.

The default, "power-of-two", is power of two choices on outstanding requests: pick two replicas
at random and send to the less loaded one, which avoids the herd that pure least-loaded causes
when many requests arrive between load updates. "round-robin" is there for comparison (it is
what most generated nginx configurations do).

On top of either, a request with an affinity key (an ``X-Session-ID`` header, or the start of the
prompt when prefix affinity is on) goes to the replica that key hashes to, so a conversation or a
shared system prompt keeps hitting a warm KV cache. The hash is rendezvous hashing: adding or
losing a replica moves only the keys that replica owned. When the key's replica is busy, the
request goes to the key's next replica in rendezvous order rather than waiting.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal, Protocol

from slurm_llm.router._backends import Backend

PolicyName = Literal["power-of-two", "round-robin"]
POLICIES: tuple[PolicyName, ...] = ("power-of-two", "round-robin")


class Policy(Protocol):
    def choose(self, model: str, free: Sequence[Backend]) -> Backend: ...


class PowerOfTwoChoices:
    def choose(self, model: str, free: Sequence[Backend]) -> Backend:
        if len(free) == 1:
            return free[0]
        first, second = random.sample(free, 2)
        return first if first.in_flight <= second.in_flight else second


class RoundRobin:
    def __init__(self) -> None:
        self._turn: defaultdict[str, int] = defaultdict(int)

    def choose(self, model: str, free: Sequence[Backend]) -> Backend:
        """Cycles over the model's replicas in a fixed order, skipping busy ones."""
        ordered = sorted(free, key=lambda backend: backend.url)
        self._turn[model] += 1
        return ordered[self._turn[model] % len(ordered)]


def make_policy(name: PolicyName) -> Policy:
    return RoundRobin() if name == "round-robin" else PowerOfTwoChoices()


def by_affinity(key: str, free: Sequence[Backend]) -> Backend:
    """The free replica ranked highest for ``key`` by rendezvous hashing."""

    def weight(backend: Backend) -> bytes:
        return hashlib.blake2b(f"{backend.url}\0{key}".encode(), digest_size=8).digest()

    return max(free, key=weight)
