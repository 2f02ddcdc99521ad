"""``slurm-llm bench``: clear errors before any load, models and comparisons from the shell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slurm_llm.bench import save_run
from slurm_llm.cli import main
from tests.unit.bench.test_results import synthetic_run


def test_an_unknown_deployment_fails_before_any_load(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_LLM_HOME", str(tmp_path))
    assert main(["bench", "run", "--deployment", "nope"]) == 1
    assert "deployment 'nope' has no ready replicas" in capsys.readouterr().err


def test_a_url_that_does_not_answer_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "run", "--url", "http://127.0.0.1:9"]) == 1
    assert "does not answer GET /v1/models" in capsys.readouterr().err


def test_load_levels_must_be_positive_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "run", "--url", "http://x", "--concurrency", "1,0"])
    assert exit_info.value.code == 2
    assert "expected positive numbers" in capsys.readouterr().err


def test_models_writes_every_paper_shape(tmp_path: Path) -> None:
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")
    dest = tmp_path / "models"
    assert main(["bench", "models", "--dest", str(dest), "--tokenizer", str(tokenizer)]) == 0
    shapes = sorted(p.name for p in dest.iterdir())
    assert shapes == ["llama-3.1-70b", "llama-3.1-8b", "llama-3.2-1b", "llama-3.2-3b"]
    config = json.loads((dest / "llama-3.1-70b" / "config.json").read_text())
    assert config["num_hidden_layers"] == 80


def test_compare_and_plot_read_saved_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = save_run(synthetic_run("one"), tmp_path, "one")
    two = save_run(synthetic_run("two", 2.0), tmp_path, "two")
    assert main(["bench", "compare", str(one), str(two), "--plot", str(tmp_path / "both")]) == 0
    assert "(2.00x)" in capsys.readouterr().out
    assert (tmp_path / "both-throughput.png").exists()
    assert main(["bench", "plot", str(one)]) == 0
    assert (tmp_path / "one-latency.png").exists()
