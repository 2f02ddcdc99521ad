"""The saturation rule on synthetic sweeps whose knee is known."""

from __future__ import annotations

from slurm_llm.bench import LatencyTargets, LevelResult, capacity_at_targets, saturation_point
from tests.unit.bench.synthetic import level


def sweep(*points: tuple[int, float]) -> list[LevelResult]:
    return [level(users, tok_s) for users, tok_s in points]


def test_the_knee_is_the_smallest_load_reaching_90_percent_of_the_peak() -> None:
    levels = sweep((1, 30), (2, 60), (4, 110), (8, 190), (16, 200), (32, 205))
    found = saturation_point(levels)
    assert found.load == 8  # 190 >= 0.9 * 205, while 110 is not
    assert "peak 205.0 tok/s at 32" in found.reason


def test_a_sweep_still_climbing_at_its_end_has_no_saturation_point() -> None:
    found = saturation_point(sweep((1, 30), (2, 60), (4, 110), (8, 190)))
    assert found.load is None
    assert "not saturated" in found.reason and "sweep higher" in found.reason


def test_a_noisy_dip_after_the_peak_does_not_move_the_knee() -> None:
    levels = sweep((1, 50), (2, 95), (4, 100), (8, 88), (16, 97))
    assert saturation_point(levels).load == 2


def test_levels_that_mostly_failed_are_left_out() -> None:
    levels = sweep((1, 50), (2, 95), (4, 100))
    levels.append(level(8, 400, failed=3))  # 1 of 4 completed: its throughput means nothing
    assert saturation_point(levels).load == 2


def test_one_level_is_not_enough_to_find_a_knee() -> None:
    assert saturation_point(sweep((1, 50))).load is None


def test_capacity_is_the_largest_load_meeting_the_targets_with_all_below_it() -> None:
    targets = LatencyTargets(ttft_s=2.0, tpot_s=0.1)
    levels = [level(1, 10, tpot=0.05), level(2, 20, tpot=0.08), level(4, 30, tpot=0.2)]
    levels.append(level(8, 40, tpot=0.05))  # a lucky level above a failing one does not count
    assert capacity_at_targets(levels, targets).load == 2


def test_no_capacity_when_the_lowest_load_misses_or_a_request_failed() -> None:
    targets = LatencyTargets(ttft_s=2.0, tpot_s=0.1)
    assert capacity_at_targets([level(1, 10, tpot=0.5)], targets).load is None
    assert capacity_at_targets([level(1, 10, failed=1)], targets).load is None
