"""Which free replica a request gets."""

from __future__ import annotations

from collections import Counter

from slurm_llm.router._backends import Backend
from slurm_llm.router._policies import PowerOfTwoChoices, RoundRobin, by_affinity, make_policy


def replicas(count: int) -> list[Backend]:
    return [Backend(f"http://10.0.0.{i}:8000", "m") for i in range(count)]


def test_round_robin_takes_every_replica_in_turn() -> None:
    backends = replicas(3)
    policy = RoundRobin()
    picks = [policy.choose("m", backends).url for _ in range(9)]
    assert Counter(picks) == {b.url: 3 for b in backends}
    assert picks[:3] == picks[3:6]


def test_power_of_two_never_picks_the_busier_of_two() -> None:
    idle, busy = replicas(2)
    busy.in_flight = 5
    assert all(PowerOfTwoChoices().choose("m", [idle, busy]) is idle for _ in range(50))


def test_power_of_two_avoids_the_busiest_of_many() -> None:
    backends = replicas(4)
    for load, backend in enumerate(backends):
        backend.in_flight = load
    picks = Counter(PowerOfTwoChoices().choose("m", backends).url for _ in range(400))
    assert backends[-1].url not in picks  # it loses every pair it is drawn into


def test_policies_by_name() -> None:
    assert isinstance(make_policy("round-robin"), RoundRobin)
    assert isinstance(make_policy("power-of-two"), PowerOfTwoChoices)


def test_affinity_sends_a_key_to_the_same_replica_every_time() -> None:
    backends = replicas(4)
    assert len({by_affinity("session-42", backends).url for _ in range(20)}) == 1


def test_affinity_spreads_keys_over_replicas() -> None:
    backends = replicas(4)
    owners = Counter(by_affinity(f"session-{i}", backends).url for i in range(400))
    assert len(owners) == 4 and min(owners.values()) > 60


def test_losing_a_replica_moves_only_the_keys_it_owned() -> None:
    backends = replicas(4)
    before = {i: by_affinity(f"k{i}", backends).url for i in range(200)}
    survivors = backends[1:]
    after = {i: by_affinity(f"k{i}", survivors).url for i in range(200)}
    moved = [i for i in before if before[i] != after[i]]
    assert moved and all(before[i] == backends[0].url for i in moved)
