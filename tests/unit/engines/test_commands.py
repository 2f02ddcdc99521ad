"""Engine command lines and environments, checked against stored references.

A reference is the whole argv and environment an engine gets for a representative spec; a change
in what we ask engines to do shows up as a reviewed diff of these files. Regenerate them with
``SLURM_LLM_UPDATE_REFERENCES=1 pytest tests/unit/engines``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from slurm_llm import ModelSpec, SpecError
from slurm_llm.engines import LaunchContext, get_engine

REFERENCES = Path(__file__).parent / "reference"

LLAMA_405B_ON_2_NODES = ModelSpec(
    name="llama-3.1-405b", model="/shared/llama-405b", parameters_b=405, attention_heads=128,
    precision="fp8", nodes=2, gpus_per_node=8,
)  # fmt: skip

CASES: dict[str, tuple[ModelSpec, LaunchContext]] = {
    "vllm-cuda-tp4": (
        ModelSpec(
            name="llama-3.1-70b",
            model="/shared/models/llama-70b",
            engine="vllm",
            parameters_b=70.6,
            attention_heads=64,
            precision="bf16",
            context_length=8192,
            max_concurrent_requests=128,
            engine_args=["--enable-prefix-caching"],
        ),
        LaunchContext("10.0.0.7", 24001, "/shared/models/llama-70b", ("0", "1", "2", "3"), 32),
    ),
    "vllm-cpu": (
        ModelSpec.preset("smollm2-135m-vllm-cpu", engine_env="/opt/envs/vllm-cpu"),
        LaunchContext("127.0.0.1", 24002, "/models/smollm2", (), 2),
    ),
    "vllm-cuda-fp8-container": (
        ModelSpec(
            name="llama-3.1-8b",
            model="/shared/llama-8b",
            parameters_b=8.0,
            attention_heads=32,
            precision="fp8",
            quantization="fp8",
            container="/shared/images/vllm.sif",
        ),
        LaunchContext("10.0.0.8", 24003, "/shared/llama-8b", ("2",), 8),
    ),
    "vllm-2-nodes-rank0": (
        LLAMA_405B_ON_2_NODES,
        LaunchContext(
            "10.0.0.10",
            24007,
            "/shared/llama-405b",
            tuple("01234567"),
            64,
            nodes=2,
            node_rank=0,
            master_addr="10.0.0.10",
            master_port=25001,
        ),
    ),
    "vllm-2-nodes-rank1": (
        LLAMA_405B_ON_2_NODES,
        LaunchContext(
            "10.0.0.11",
            24008,
            "/shared/llama-405b",
            tuple("01234567"),
            64,
            nodes=2,
            node_rank=1,
            master_addr="10.0.0.10",
            master_port=25001,
        ),
    ),
    "tgi-cuda-tp2": (
        ModelSpec(
            name="llama-3.2-3b",
            model="meta-llama/Llama-3.2-3B-Instruct",
            engine="tgi",
            gpus_per_replica=2,
            attention_heads=24,
            context_length=4096,
        ),
        LaunchContext("10.0.0.9", 24004, "meta-llama/Llama-3.2-3B-Instruct", ("0", "1"), 16),
    ),
    "llamacpp-cpu": (
        ModelSpec.preset("smollm2-135m", engine_env="/opt/envs/llama"),
        LaunchContext("127.0.0.1", 24005, "/models/smollm2.gguf", (), 1),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_command_and_environment_match_the_reference(case: str) -> None:
    spec, ctx = CASES[case]
    engine = get_engine(spec.engine)
    actual = {"argv": engine.command(spec, ctx), "env": engine.environment(spec, ctx)}
    path = REFERENCES / f"{case}.json"
    if os.environ.get("SLURM_LLM_UPDATE_REFERENCES"):
        path.write_text(json.dumps(actual, indent=2) + "\n")
    assert actual == json.loads(path.read_text())


def test_vllm_tensor_parallelism_follows_the_allocated_gpus() -> None:
    spec, ctx = CASES["vllm-cuda-tp4"]
    argv = get_engine("vllm").command(spec, ctx)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert get_engine("vllm").environment(spec, ctx)["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"


def test_tgi_shards_over_the_allocated_gpus() -> None:
    spec, ctx = CASES["tgi-cuda-tp2"]
    argv = get_engine("tgi").command(spec, ctx)
    assert argv[:1] == ["text-generation-launcher"]
    assert argv[argv.index("--num-shard") + 1] == "2"


def test_llamacpp_runs_in_this_interpreter_without_engine_env() -> None:
    spec = ModelSpec.preset("smollm2-135m")
    ctx = LaunchContext("127.0.0.1", 24006, "/m.gguf")
    assert get_engine("llamacpp").command(spec, ctx)[:3] == [
        sys.executable,
        "-m",
        "slurm_llm.engines.llamacpp_server",
    ]


def test_spec_environment_overrides_engine_defaults() -> None:
    spec = ModelSpec.preset("smollm2-135m-vllm-cpu", env={"VLLM_CPU_KVCACHE_SPACE": "8"})
    env = get_engine("vllm").environment(spec, LaunchContext("127.0.0.1", 1, "/m"))
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "8"


def test_unknown_engine_lists_the_known_ones() -> None:
    with pytest.raises(SpecError, match="unknown engine 'ollama'; available: vllm, tgi, llamacpp"):
        get_engine("ollama")


def test_a_replica_on_two_nodes_is_tensor_parallel_inside_and_pipeline_parallel_across() -> None:
    spec, head = CASES["vllm-2-nodes-rank0"]
    _, worker = CASES["vllm-2-nodes-rank1"]
    head_argv = get_engine("vllm").command(spec, head)
    worker_argv = get_engine("vllm").command(spec, worker)
    assert head_argv[head_argv.index("--tensor-parallel-size") + 1] == "8"
    assert head_argv[head_argv.index("--pipeline-parallel-size") + 1] == "2"
    assert "--headless" not in head_argv and worker_argv[-1] == "--headless"
    assert worker_argv[worker_argv.index("--master-addr") + 1] == "10.0.0.10"


def test_vllm_schedules_by_priority_and_says_so_unless_the_spec_picks_a_policy() -> None:
    spec, ctx = CASES["vllm-cuda-tp4"]
    vllm = get_engine("vllm")
    argv = vllm.command(spec, ctx)
    assert argv[argv.index("--scheduling-policy") + 1] == "priority"
    assert vllm.takes_priority(spec)
    fcfs = spec.with_overrides(engine_args=["--scheduling-policy=fcfs"])
    assert vllm.command(fcfs, ctx).count("--scheduling-policy") == 0
    assert not vllm.takes_priority(fcfs)
    assert vllm.takes_priority(spec.with_overrides(engine_args=["--scheduling-policy", "priority"]))


def test_engines_without_request_priorities_are_not_sent_one() -> None:
    for case in ("llamacpp-cpu", "tgi-cuda-tp2"):
        spec, _ = CASES[case]
        assert not get_engine(spec.engine).takes_priority(spec)
