"""Where a deployment saturates: the paper's stars, by a rule stated here and unit-tested.

**Throughput knee** (the star in every plot). Output-token throughput rises with load until the
engines' batches are full; beyond that, more users only wait longer. The saturation point is
the *smallest load whose throughput reaches ``peak_fraction`` (90 %) of the sweep's peak*. If
the sweep's last load beats every lower load's throughput by ``still_growing`` (10 %) or more,
the peak is not a plateau but the sweep's end, and no point is marked: extend the sweep. A
plateau is judged on throughput alone, so a noisy dip after the peak does not move the star, and
a point is never placed on a level whose requests mostly failed (those levels are left out).

**Capacity at latency targets.** The largest load at which p90 TTFT and p90 TPOT both meet the
targets and no request failed or was refused, there and at every lower load (a lucky level
above a failing one does not count): what a service can promise its users. It answers
a different question than the knee, and is reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

from slurm_llm.bench._results import LatencyTargets, LevelResult, Saturation

PEAK_FRACTION = 0.9
STILL_GROWING = 0.10
KNEE_RULE = (
    "smallest load reaching {fraction:.0%} of peak output-token throughput; none if the last "
    "load beats all lower ones by {growth:.0%} or more"
)


def _usable(levels: Sequence[LevelResult]) -> list[LevelResult]:
    """Levels where at least half the requests completed, by load."""
    return sorted((lv for lv in levels if lv.completed * 2 >= lv.requests > 0), key=_load)


def _load(level: LevelResult) -> float:
    return level.load


def saturation_point(
    levels: Sequence[LevelResult],
    peak_fraction: float = PEAK_FRACTION,
    still_growing: float = STILL_GROWING,
) -> Saturation:
    rule = KNEE_RULE.format(fraction=peak_fraction, growth=still_growing)
    usable = _usable(levels)
    if len(usable) < 2:
        return Saturation(load=None, rule=rule, reason="fewer than two levels completed")
    last = usable[-1]
    best_before = max(usable[:-1], key=lambda lv: lv.output_token_throughput)
    if last.output_token_throughput >= (1 + still_growing) * best_before.output_token_throughput:
        growth = last.output_token_throughput / max(best_before.output_token_throughput, 1e-12)
        return Saturation(
            load=None,
            rule=rule,
            reason=(
                f"not saturated: throughput at load {last.load:g}, the sweep's last, is "
                f"{growth - 1:.0%} above any lower load's; sweep higher"
            ),
        )
    peak = max(usable, key=lambda lv: lv.output_token_throughput)
    knee = next(
        lv
        for lv in usable
        if lv.output_token_throughput >= peak_fraction * peak.output_token_throughput
    )
    return Saturation(
        load=knee.load,
        rule=rule,
        reason=(
            f"{knee.output_token_throughput:.1f} tok/s at load {knee.load:g}, peak "
            f"{peak.output_token_throughput:.1f} tok/s at {peak.load:g}"
        ),
    )


def capacity_at_targets(levels: Sequence[LevelResult], targets: LatencyTargets) -> Saturation:
    rule = (
        f"largest load with p90 TTFT <= {targets.ttft_s:g} s, p90 TPOT <= "
        f"{targets.tpot_s * 1000:g} ms and no failed or refused request, at it and every "
        "lower load"
    )
    best = None
    for level in sorted(levels, key=_load):
        if not _meets(level, targets):
            break
        best = level
    if best is None:
        return Saturation(load=None, rule=rule, reason="the lowest load missed the targets")
    return Saturation(
        load=best.load,
        rule=rule,
        reason=f"{best.goodput:.2f} req/s of goodput at load {best.load:g}",
    )


def _meets(level: LevelResult, targets: LatencyTargets) -> bool:
    return (
        level.completed == level.requests > 0
        and level.ttft.p90 is not None
        and level.ttft.p90 <= targets.ttft_s
        and (level.tpot.p90 is None or level.tpot.p90 <= targets.tpot_s)
    )
