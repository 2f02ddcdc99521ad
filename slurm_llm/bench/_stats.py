"""From the requests of one load level to its numbers: percentiles, throughput, goodput.

Percentiles interpolate linearly between the two nearest ranks (numpy's default, and what most
serving benchmarks report), so p99 of 50 requests is not simply the slowest one. Throughput
divides by the level's wall time, from the first request sent to the last one finished.
Goodput counts completed requests that met both latency targets, as DistServe defined it and
vLLM's benchmark reports it: the load a deployment can carry while users stay satisfied.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from slurm_llm.bench._results import LatencyTargets, LevelResult, Percentiles, RequestRecord


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0 to 100) by linear interpolation; None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"a percentile is between 0 and 100, not {q}")
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def percentiles(values: Sequence[float]) -> Percentiles:
    if not values:
        return Percentiles()
    return Percentiles(
        mean=statistics.fmean(values),
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        p99=percentile(values, 99),
    )


def meets_targets(record: RequestRecord, targets: LatencyTargets) -> bool:
    """Completed, first token within the TTFT target, and decoding within the TPOT target (a
    one-token answer has no TPOT and is judged on TTFT alone)."""
    if not record.ok or record.ttft_s is None or record.ttft_s > targets.ttft_s:
        return False
    tpot = record.tpot_s
    return tpot is None or tpot <= targets.tpot_s


def summarise_level(
    records: Sequence[RequestRecord],
    targets: LatencyTargets,
    *,
    concurrency: int | None = None,
    rate: float | None = None,
) -> LevelResult:
    if (concurrency is None) == (rate is None):
        raise ValueError("a level has either a concurrency or a rate")
    done = [r for r in records if r.ok]
    ends = [r.start_s + (r.e2e_s or 0.0) for r in done]
    wall = (max(ends) - min(r.start_s for r in records)) if done else 0.0
    output = sum(r.output_tokens for r in done)
    prompts = [r.prompt_tokens for r in done if r.prompt_tokens is not None]
    good = sum(meets_targets(r, targets) for r in done)

    def per_second(amount: float) -> float:
        return amount / wall if wall > 0 else 0.0

    return LevelResult(
        concurrency=concurrency,
        rate=rate,
        requests=len(records),
        completed=len(done),
        errors=sum(1 for r in records if r.error is not None and not r.rejected),
        rejected=sum(1 for r in records if r.rejected),
        wall_s=wall,
        request_throughput=per_second(len(done)),
        output_token_throughput=per_second(output),
        total_token_throughput=per_second(output + sum(prompts)),
        goodput=per_second(good),
        slo_attainment=good / len(records) if records else 0.0,
        mean_prompt_tokens=statistics.fmean(prompts) if prompts else None,
        mean_output_tokens=statistics.fmean(r.output_tokens for r in done) if done else None,
        ttft=percentiles([r.ttft_s for r in done if r.ttft_s is not None]),
        itl=percentiles([gap for r in done for gap in r.itl_s]),
        tpot=percentiles([t for r in done if (t := r.tpot_s) is not None]),
        e2e=percentiles([r.e2e_s for r in done if r.e2e_s is not None]),
        records=list(records),
    )
