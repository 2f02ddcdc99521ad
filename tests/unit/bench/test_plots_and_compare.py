"""Figures 3 and 4 for one or many runs, and runs side by side."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from slurm_llm._errors import SlurmLLMError
from slurm_llm.bench import plot_runs
from slurm_llm.bench._report import compare_table, level_table
from tests.unit.bench.test_results import synthetic_run


def test_both_figures_are_drawn_for_several_runs(tmp_path: Path) -> None:
    paths = plot_runs([synthetic_run("one"), synthetic_run("two", 1.9)], tmp_path / "fig")
    assert [p.name for p in paths] == ["fig-latency.png", "fig-throughput.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_runs_by_users_and_by_rate_do_not_share_a_plot(tmp_path: Path) -> None:
    by_rate = synthetic_run("rate")
    by_rate = by_rate.model_copy(
        update={"settings": by_rate.settings.model_copy(update={"mode": "rate"})}
    )
    with pytest.raises(SlurmLLMError, match="cannot share a plot"):
        plot_runs([synthetic_run(), by_rate], tmp_path / "fig")


def render(table: object) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_the_level_table_stars_the_saturation_point() -> None:
    run = synthetic_run()
    assert run.saturation.load == 2
    text = render(level_table(run))
    assert "2 *" in text and "38.0" in text


def test_compare_shows_peak_throughput_as_a_ratio_of_the_first_run() -> None:
    text = render(compare_table([synthetic_run("one"), synthetic_run("two", 1.9)]))
    assert "41.0 (1.00x)" in text and "78.0 (1.90x)" in text
    assert "saturation" in text
