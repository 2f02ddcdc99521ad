"""Tables of a run, and of several runs side by side, for the terminal."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from slurm_llm.bench._results import BenchRun, LevelResult


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _load(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _load_name(run: BenchRun) -> str:
    return "users" if run.settings.mode == "concurrency" else "req/s"


def level_table(run: BenchRun) -> Table:
    table = Table(
        title=f"{run.label}: {run.settings.workload} via {run.target.front_end} "
        f"({run.target.engine}, {run.target.model}, {run.target.replicas or '?'} replica(s))"
    )
    for column in (
        _load_name(run), "done", "failed", "refused", "tok/s", "req/s", "goodput",
        "TTFT s p50/p99", "TPOT ms p50/p99", "E2E s p50/p99",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for level in run.levels:
        star = " *" if level.load == run.saturation.load else ""
        table.add_row(
            f"{level.load:g}{star}",
            str(level.completed),
            str(level.errors),
            str(level.rejected),
            f"{level.output_token_throughput:.1f}",
            f"{level.request_throughput:.2f}",
            f"{level.goodput:.2f}",
            f"{_s(level.ttft.p50)}/{_s(level.ttft.p99)}",
            f"{_ms(level.tpot.p50)}/{_ms(level.tpot.p99)}",
            f"{_s(level.e2e.p50)}/{_s(level.e2e.p99)}",
        )
    table.caption = (
        f"* saturation: {run.saturation.reason} ({run.saturation.rule}). "
        f"Capacity at targets: {_load(run.slo_capacity.load)} "
        f"({run.slo_capacity.reason}). ITL and means: in the JSON and CSV."
    )
    return table


def _cell(level: LevelResult | None) -> str:
    """tok/s | TPOT p50 ms | E2E p99 s of one level, and its failures if any."""
    if level is None:
        return "-"
    text = f"{level.output_token_throughput:.1f} | {_ms(level.tpot.p50)} | {_s(level.e2e.p99)}"
    failed = level.requests - level.completed
    return f"{text} ({failed} failed)" if failed else text


def compare_table(runs: Sequence[BenchRun]) -> Table:
    """Runs side by side: throughput and latency per load, then each run's saturation point
    and peak throughput as a ratio of the first run's."""
    table = Table(title="tok/s | TPOT p50 ms | E2E p99 s, per load")
    table.add_column("load", justify="right")
    for run in runs:
        table.add_column(run.label, justify="right")
    loads = sorted({level.load for run in runs for level in run.levels})
    by_load: list[dict[float, LevelResult]] = [{lv.load: lv for lv in run.levels} for run in runs]
    for load in loads:
        table.add_row(f"{load:g}", *(_cell(levels.get(load)) for levels in by_load))
    table.add_section()
    table.add_row("saturation", *(_load(run.saturation.load) for run in runs))
    table.add_row("at targets", *(_load(run.slo_capacity.load) for run in runs))
    base = runs[0].peak_throughput
    table.add_row(
        "peak tok/s",
        *(
            f"{run.peak_throughput:.1f} ({run.peak_throughput / base:.2f}x)"
            if base
            else f"{run.peak_throughput:.1f}"
            for run in runs
        ),
    )
    table.add_row("front end", *(run.target.front_end for run in runs))
    table.add_row("replicas", *(str(run.target.replicas or "?") for run in runs))
    return table
