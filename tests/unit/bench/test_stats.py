"""Percentiles, throughput and goodput of one level, on requests with known answers."""

from __future__ import annotations

import pytest

from slurm_llm.bench import LatencyTargets, RequestRecord, percentile, summarise_level
from tests.unit.bench.synthetic import request


def test_percentiles_interpolate_between_ranks_like_numpy() -> None:
    values = [10.0, 1.0, 4.0, 3.0, 2.0]  # order does not matter
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(7.6)  # numpy.percentile(values, 90)
    assert percentile(values, 100) == 10.0
    assert percentile([7.0], 99) == 7.0


def test_no_values_have_no_percentile_and_bad_quantiles_are_refused() -> None:
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)


def test_time_per_output_token_excludes_the_first_token() -> None:
    assert request(ttft=0.5, e2e=2.5, tokens=11).tpot_s == pytest.approx(0.2)
    assert request(tokens=1).tpot_s is None
    assert RequestRecord(start_s=0, error="HTTP 500").tpot_s is None


def test_throughput_counts_completed_tokens_over_the_level_wall_time() -> None:
    records = [
        request(start=0.0, e2e=2.0, tokens=10),
        request(start=1.0, e2e=3.0, tokens=30),  # the level ends at 4.0
        RequestRecord(start_s=0.5, error="HTTP 500: boom"),
        RequestRecord(start_s=0.5, error="HTTP 429: busy", rejected=True),
    ]
    level = summarise_level(records, LatencyTargets(), concurrency=2)
    assert (level.requests, level.completed, level.errors, level.rejected) == (4, 2, 1, 1)
    assert level.wall_s == pytest.approx(4.0)
    assert level.output_token_throughput == pytest.approx(40 / 4.0)
    assert level.request_throughput == pytest.approx(2 / 4.0)
    assert level.total_token_throughput == pytest.approx((40 + 200) / 4.0)
    assert level.mean_output_tokens == 20
    assert level.records == records  # nothing is dropped, failures included


def test_goodput_counts_only_requests_meeting_both_targets() -> None:
    targets = LatencyTargets(ttft_s=1.0, tpot_s=0.1)
    records = [
        request(start=0.0, ttft=0.5, e2e=1.5, tokens=11),  # TPOT 0.1: meets both
        request(start=0.0, ttft=1.5, e2e=2.0, tokens=11),  # first token too late
        request(start=0.0, ttft=0.5, e2e=4.0, tokens=11),  # decodes too slowly
        RequestRecord(start_s=0.0, error="timeout"),
    ]
    level = summarise_level(records, targets, concurrency=4)
    assert level.goodput == pytest.approx(1 / level.wall_s)
    assert level.slo_attainment == 0.25


def test_latency_distributions_of_a_level() -> None:
    records = [request(ttft=t, e2e=t + 1.0, tokens=11, itl_s=[0.1, 0.1]) for t in (1.0, 2.0, 3.0)]
    level = summarise_level(records, LatencyTargets(), rate=0.5)
    assert level.load == 0.5
    assert level.ttft.p50 == 2.0 and level.e2e.p50 == 3.0
    assert level.tpot.mean == pytest.approx(0.1)
    assert level.itl.p99 == pytest.approx(0.1)


def test_a_level_is_either_users_or_a_rate() -> None:
    with pytest.raises(ValueError, match="either"):
        summarise_level([request()], LatencyTargets(), concurrency=1, rate=1.0)
