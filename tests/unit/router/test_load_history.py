"""The console's load charts: percentiles from histogram buckets, rates from counter samples,
read from the router's own metrics."""

from __future__ import annotations

import pytest

from slurm_llm.router._admission import Admission
from slurm_llm.router._backends import BackendPool
from slurm_llm.router._load_history import (
    Buckets,
    LoadHistory,
    Sample,
    per_second,
    quantile,
    read_sample,
    window_quantile,
)
from slurm_llm.router._metrics import RouterMetrics
from slurm_llm.router._policies import make_policy

INF = float("inf")
BOUNDS = (0.1, 0.5, 1.0, INF)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.1, 0.05),  # rank 1 of 10, in (0, 0.1] holding 2: halfway
        (0.5, 0.4),  # rank 5, in (0.1, 0.5] holding the 3rd to 6th: 3 of 4 along
        (0.8, 1.0),  # rank 8: the last in (0.5, 1]
        (0.99, 1.0),  # rank 9.9, in +Inf: reported at the highest finite bound
    ],
)
def test_a_quantile_is_interpolated_within_its_bucket(q: float, expected: float) -> None:
    assert quantile(q, BOUNDS, (2, 6, 8, 10)) == pytest.approx(expected)


def test_no_observation_has_no_quantile() -> None:
    assert quantile(0.5, BOUNDS, (0, 0, 0, 0)) is None
    assert window_quantile(0.5, None, None) is None


def test_a_window_counts_only_what_was_observed_in_it() -> None:
    before = (BOUNDS, (100.0, 100.0, 100.0, 100.0))  # 100 fast ones, before the window
    now = (BOUNDS, (100.0, 100.0, 104.0, 104.0))  # then 4 between 0.5 and 1 s
    assert window_quantile(0.5, now, before) == pytest.approx(0.75)
    assert window_quantile(0.5, now, None) == pytest.approx(0.1 * 52 / 100)


def test_a_counter_that_went_back_counts_from_zero() -> None:
    assert per_second(30, 10, 2) == 10
    assert per_second(4, 10, 2) == 2  # a restarted worker's counter


def metrics() -> RouterMetrics:
    pool = BackendPool(None, static=[("m", "http://127.0.0.1:9")], replica_limit=4)
    return RouterMetrics(Admission(pool, make_policy("round-robin"), 16))


def test_a_sample_sums_the_metrics_over_their_other_labels() -> None:
    router = metrics()
    router.requests.labels("m", "/v1/chat/completions", "200").inc(5)
    router.requests.labels("m", "/v1/completions", "503").inc(2)
    router.tokens.labels("m", "prompt").inc(30)
    router.tokens.labels("m", "completion").inc(12)
    router.key_requests.labels("alice", "200").inc(3)
    for seconds in (0.05, 0.3, 0.3, 2.0):
        router.latency.labels("m", "/v1/chat/completions").observe(seconds)
    sample = read_sample(router.families(), at=0.0)
    assert sample.requests == {"m": 7} and sample.errors == {"m": 2}
    assert sample.tokens == {"m": 42} and sample.key_requests == {"alice": 3}
    assert sample.capacity == {"m": 4} and sample.in_flight == {"m": 0}
    bounds, counts = sample.latency["m"]
    assert bounds[-1] == INF and counts[-1] == 4
    # rank 2 of 4: the first of the two in (0.25, 0.5], one already below it
    assert quantile(0.5, bounds, counts) == pytest.approx(0.25 + 0.25 * (2 - 1) / (3 - 1))


def test_the_series_has_a_point_per_sample_with_rates_since_the_one_before() -> None:
    history = LoadHistory(metrics())
    latency: dict[str, Buckets] = {"m": (BOUNDS, (0.0, 0.0, 0.0, 0.0))}
    later: dict[str, Buckets] = {"m": (BOUNDS, (0.0, 4.0, 4.0, 4.0))}
    history.samples.extend([
        Sample(at=1e12, requests={"m": 10}, tokens={"m": 100}, latency=latency, capacity={"m": 4}),
        Sample(at=1e12 + 2, requests={"m": 30, "unknown": 5}, tokens={"m": 160}, latency=later,
               capacity={"m": 4}, in_flight={"m": 3}),
    ])  # fmt: skip
    models = history.series(minutes=10)["models"]
    assert list(models) == ["m"]  # requests for no served model have no chart
    series = models["m"]
    assert series["t"] == [1e12 + 2]
    assert series["requests_per_s"] == [10.0] and series["tokens_per_s"] == [30.0]
    assert series["in_flight"] == [3] and series["capacity"] == [4]
    assert series["latency_p50_s"] == [pytest.approx(0.3)]
    assert series["ttft_p50_s"] == [None]  # no stream in the window
