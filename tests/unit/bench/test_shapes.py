"""The paper's model shapes have the published parameter counts, and become servable folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slurm_llm._errors import SpecError
from slurm_llm.bench import PAPER_SHAPES, write_dummy_model
from slurm_llm.bench._shapes import LLAMA3_VOCAB, llama_config, parameter_count


@pytest.mark.parametrize(
    ("shape", "billions"),
    [
        ("llama-3.2-1b", 1.24),
        ("llama-3.2-3b", 3.21),
        ("llama-3.1-8b", 8.03),
        ("llama-3.1-70b", 70.55),
    ],
)
def test_with_llama3s_vocabulary_the_shapes_have_the_published_sizes(
    shape: str, billions: float
) -> None:
    count = parameter_count(llama_config(shape, vocab_size=LLAMA3_VOCAB))
    assert count / 1e9 == pytest.approx(billions, rel=0.01)


def test_a_dummy_model_folder_has_the_config_and_the_tokenizer(tmp_path: Path) -> None:
    tokenizer = tmp_path / "smollm2"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")
    (tokenizer / "tokenizer_config.json").write_text("{}")
    dest = write_dummy_model(tmp_path / "out", "llama-3.1-8b", tokenizer)
    config = json.loads((dest / "config.json").read_text())
    assert config["hidden_size"] == 4096 and config["num_hidden_layers"] == 32
    assert config["vocab_size"] == 49152 and config["rope_scaling"]["rope_type"] == "llama3"
    assert {p.name for p in dest.iterdir()} >= {"tokenizer.json", "tokenizer_config.json"}
    assert "--load-format dummy" in (dest / "README.md").read_text()


def test_without_a_tokenizer_the_error_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="slurm-llm prepare-model"):
        write_dummy_model(tmp_path / "out", "llama-3.2-1b", tmp_path)
    assert not (tmp_path / "out" / "config.json").exists()


def test_an_unknown_shape_names_the_known_ones() -> None:
    with pytest.raises(SpecError, match=", ".join(PAPER_SHAPES)):
        llama_config("llama-4")
