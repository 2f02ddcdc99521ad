"""The paper's figures for any runs: Figure 3 (latency against concurrent users, saturation
starred) and Figure 4 (throughput against concurrent users), one line per run.

matplotlib is an optional dependency (``pip install slurm-llm[bench]``): a cluster's login node
can run sweeps without it and plot elsewhere from the JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slurm_llm._errors import SlurmLLMError
from slurm_llm.bench._machine import describe
from slurm_llm.bench._results import BenchRun, LevelResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes

Metric = Callable[[LevelResult], float | None]


def _pyplot() -> Any:
    try:
        import matplotlib  # noqa: PLC0415 (optional: only plotting needs it)
    except ImportError:
        raise SlurmLLMError(
            "plots need matplotlib: pip install 'slurm-llm[bench]' (the JSON and CSV are written "
            "without it, and `slurm-llm bench plot RUN.json` draws them later)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _panel(axis: Axes, runs: Sequence[BenchRun], metric: Metric, ylabel: str) -> None:
    for run in runs:
        points: dict[float, float] = {}
        for level in run.levels:
            value = metric(level)
            if value is not None:
                points[level.load] = value
        xs, ys = list(points), list(points.values())
        (line,) = axis.plot(xs, ys, marker="o", markersize=3, label=run.label)
        knee = run.saturation.load
        if knee is not None and knee in points:
            axis.plot(
                [knee], [points[knee]], marker="*", markersize=14, color=line.get_color(),
                markeredgecolor="black", linestyle="none",
            )  # fmt: skip
    mode = runs[0].settings.mode
    axis.set_xscale("log", base=2)
    axis.set_xlabel("concurrent users" if mode == "concurrency" else "request rate (req/s)")
    axis.set_ylabel(ylabel)
    axis.grid(True, alpha=0.3)


def _title(runs: Sequence[BenchRun], what: str) -> str:
    first = runs[0]
    machines = {describe(run.machine) for run in runs}
    where = machines.pop() if len(machines) == 1 else "several machines (see each JSON)"
    return (
        f"{what}: {first.settings.workload} workload, "
        f"{first.levels[0].mean_prompt_tokens or 0:.0f} prompt / "
        f"{first.levels[0].mean_output_tokens or 0:.0f} output tokens (first run)\n{where}"
    )


def _save(plt: Any, figure: Any, path: Path) -> Path:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_latency(runs: Sequence[BenchRun], path: Path) -> Path:
    """Figure 3: per-token latency and end-to-end latency against load, stars at saturation."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))

    def tpot_ms(level: LevelResult) -> float | None:
        return None if level.tpot.p50 is None else level.tpot.p50 * 1000

    _panel(left, runs, tpot_ms, "time per output token, p50 (ms)")
    _panel(right, runs, lambda lv: lv.e2e.p50, "end-to-end latency, p50 (s)")
    left.legend(fontsize=7)
    figure.suptitle(_title(runs, "Latency (paper Fig. 3)"), fontsize=8)
    return _save(plt, figure, path)


def plot_throughput(runs: Sequence[BenchRun], path: Path) -> Path:
    """Figure 4: output-token throughput and goodput against load, stars at saturation."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    _panel(left, runs, lambda lv: lv.output_token_throughput, "output tokens per second")
    _panel(right, runs, lambda lv: lv.goodput, "goodput (requests/s meeting targets)")
    left.legend(fontsize=7)
    figure.suptitle(_title(runs, "Throughput (paper Fig. 4)"), fontsize=8)
    return _save(plt, figure, path)


def plot_runs(runs: Sequence[BenchRun], stem: Path) -> list[Path]:
    """Both figures, as ``STEM-latency.png`` and ``STEM-throughput.png``."""
    if not runs:
        raise SlurmLLMError("nothing to plot: no runs given")
    if len({run.settings.mode for run in runs}) > 1:
        raise SlurmLLMError("runs by concurrency and runs by request rate cannot share a plot")
    return [
        plot_latency(runs, stem.with_name(f"{stem.name}-latency.png")),
        plot_throughput(runs, stem.with_name(f"{stem.name}-throughput.png")),
    ]
