"""What every benchmark reports: a table, JSON with the machine it ran on, and a plot.

Numbers without the machine they came from mean little, so every result file carries it.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

from slurm_llm.bench._machine import describe, machine_info

__all__ = ["RESULTS", "describe", "machine_info", "report_seconds", "save_figure"]

RESULTS = Path(__file__).parent / "results"


def save_figure(figure: Any, path: Path, title: str, info: dict[str, Any]) -> None:
    """Titles a figure with what it shows and the machine it came from, saves it, frees it."""
    figure.suptitle(f"{title}\n{describe(info)}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report_seconds(
    name: str,
    title: str,
    rows: dict[str, list[float]],
    plotted: dict[str, str],
    info: dict[str, Any],
    console: Console,
) -> Path:
    """Prints rows of timings (median/min/max), saves them as JSON with the machine, and plots
    the ``plotted`` rows (row label -> short label) as box plots. Returns the JSON path."""
    table = Table(title=title)
    for column in ("", "median s", "min s", "max s"):
        table.add_column(column, justify="right" if column else "left")
    for label, values in rows.items():
        table.add_row(
            label, f"{statistics.median(values):.3f}", f"{min(values):.3f}", f"{max(values):.3f}"
        )
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": info, "title": title, "seconds": rows}, indent=2))
    figure, axis = plt.subplots(figsize=(8, 3.5))
    axis.boxplot(
        [rows[key] for key in plotted], orientation="horizontal", tick_labels=list(plotted.values())
    )
    axis.set_xlabel("seconds")
    axis.set_title(f"{title}\n{describe(info)}", fontsize=8)
    figure.tight_layout()
    figure.savefig(out.with_suffix(".png"), dpi=120)
    console.print(f"Saved {out} and {out.with_suffix('.png')}")
    return out
