"""A run's JSON holds everything and reads back; its CSV has one row per level."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from slurm_llm._errors import SlurmLLMError
from slurm_llm.bench import (
    BenchRun,
    SweepSettings,
    TargetInfo,
    capacity_at_targets,
    load_run,
    saturation_point,
    save_run,
)
from tests.unit.bench.synthetic import level


def synthetic_run(label: str = "run", scale: float = 1.0) -> BenchRun:
    levels = [level(users, tok_s * scale) for users, tok_s in ((1, 20), (2, 38), (4, 40), (8, 41))]
    settings = SweepSettings(workload="translation", mode="concurrency", levels=[1, 2, 4, 8])
    return BenchRun(
        label=label,
        machine={"cpu": "test", "cores": 2, "memory_gib": 4, "gpu": "none", "python": "3.11"},
        target=TargetInfo(front_end="router", urls=["http://127.0.0.1:1"], model="m", replicas=1),
        settings=settings,
        levels=levels,
        saturation=saturation_point(levels),
        slo_capacity=capacity_at_targets(levels, settings.targets),
    )


def test_a_saved_run_reads_back_whole(tmp_path: Path) -> None:
    run = synthetic_run()
    path = save_run(run, tmp_path, "r")
    assert load_run(path) == run
    assert load_run(path).levels[0].records  # every request travels with the summary


def test_the_csv_has_a_row_per_level_with_flat_percentiles(tmp_path: Path) -> None:
    path = save_run(synthetic_run(), tmp_path, "r")
    with path.with_suffix(".csv").open() as rows:
        table = list(csv.DictReader(rows))
    assert [row["concurrency"] for row in table] == ["1", "2", "4", "8"]
    assert {"ttft_p99_s", "tpot_p50_s", "e2e_p90_s", "itl_mean_s", "goodput"} <= set(table[0])
    assert table[0]["front_end"] == "router" and table[0]["workload"] == "translation"


def test_every_run_has_its_own_nonce_so_caches_cannot_carry_over() -> None:
    one = SweepSettings(workload="translation", mode="concurrency", levels=[1])
    two = SweepSettings(workload="translation", mode="concurrency", levels=[1])
    assert one.nonce != two.nonce


def test_a_file_that_is_not_a_run_says_what_it_is_not(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"label": "x"}')
    with pytest.raises(SlurmLLMError, match="not a slurm-llm bench result"):
        load_run(tmp_path / "x.json")
    with pytest.raises(SlurmLLMError, match="no such file"):
        load_run(tmp_path / "missing.json")
