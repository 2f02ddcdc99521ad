import pytest

from slurm_llm import DeploymentError, ModelSpec
from slurm_llm.jobs._executors import local_parameters, resolve_kind, slurm_parameters


def test_spec_resources_map_to_sbatch_options() -> None:
    spec = ModelSpec.preset(
        "llama-3.1-70b",
        slurm={
            "partition": "gpu",
            "account": "llm",
            "qos": "high",
            "time_limit": "1-00:00",
            "constraint": "a100",
            "exclude": "gpu[01-02]",
            "nodelist": "gpu07",
            "extra": {"reservation": "paper"},
        },
    )
    assert slurm_parameters(spec, "slurm-llm-70b") == {
        "job_name": "slurm-llm-70b",
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": 16,
        "mem": f"{spec.memory_gb}GB",
        "time": 1440,
        "signal_delay_s": 120,
        "stderr_to_stdout": True,
        "gres": "gpu:2",
        "partition": "gpu",
        "account": "llm",
        "qos": "high",
        "constraint": "a100",
        "nodelist": "gpu07",
        "exclude": "gpu[01-02]",
        "additional_parameters": {"reservation": "paper"},
    }


def test_cpu_replicas_ask_for_no_gpus_and_a_default_time() -> None:
    params = slurm_parameters(ModelSpec.preset("smollm2-135m"), "x")
    assert "gres" not in params
    assert params["time"] == 240


def test_local_replicas_get_disjoint_gpu_slices() -> None:
    spec = ModelSpec.preset("llama-3.1-70b")
    assert local_parameters(spec, 0)["visible_gpus"] == (0, 1)
    assert local_parameters(spec, 1)["visible_gpus"] == (2, 3)


def test_unknown_executor_is_refused() -> None:
    with pytest.raises(DeploymentError, match="unknown executor 'kubernetes'"):
        resolve_kind("kubernetes")


def test_local_is_always_available() -> None:
    assert resolve_kind("local") == "local"


def test_multi_node_replicas_ask_slurm_for_nodes_and_refuse_local() -> None:
    spec = ModelSpec(
        name="big",
        model="m",
        parameters_b=405,
        attention_heads=128,
        precision="fp8",
        nodes=2,
        gpus_per_node=8,
    )
    params = slurm_parameters(spec, "x")
    assert (params["nodes"], params["gres"]) == (2, "gpu:4")
    with pytest.raises(DeploymentError, match="needs SLURM"):
        local_parameters(spec, 0)


def test_short_jobs_get_a_short_preemption_signal() -> None:
    spec = ModelSpec.preset("smollm2-135m", slurm={"time_limit": "00:04:00"}, handover_s=110)
    assert slurm_parameters(spec, "x")["signal_delay_s"] == 30
    assert slurm_parameters(ModelSpec.preset("smollm2-135m"), "x")["signal_delay_s"] == 120
