"""The launcher's decisions on the node, without starting an engine."""

from __future__ import annotations

import pytest

from slurm_llm import EngineError, ModelSpec
from slurm_llm.node._launcher import ReplicaLauncher, job_deadline, serving_host, visible_gpus


def launcher(spec: ModelSpec) -> ReplicaLauncher:
    return ReplicaLauncher(spec, "d", "/nonexistent-registry")


def test_tensor_parallelism_follows_the_gpus_slurm_allocated(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    spec = ModelSpec.preset("llama-3.1-70b")  # derives 2 GPUs
    assert launcher(spec)._gpus() == ("2", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert launcher(spec)._gpus() == ("0", "1", "2", "3")
    assert "tensor parallelism follows the allocation" in capsys.readouterr().out


def test_a_gpu_spec_in_a_job_without_gpus_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(EngineError, match="the job sees none"):
        launcher(ModelSpec.preset("llama-3.2-1b"))._gpus()


def test_cpu_specs_ignore_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert launcher(ModelSpec.preset("smollm2-135m"))._gpus() == ()


def test_slurm_placeholder_device_lists_mean_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "NoDevFiles")
    assert visible_gpus() == ()


def test_local_jobs_serve_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_LLM_HOST", raising=False)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    assert serving_host() == "127.0.0.1"
    monkeypatch.setenv("SLURM_LLM_HOST", "10.1.2.3")
    assert serving_host() == "10.1.2.3"


def test_the_deadline_comes_from_the_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    spec = ModelSpec.preset("smollm2-135m", slurm={"time_limit": "01:00:00"})
    assert job_deadline(1000.0, spec) == 1000.0 + 3600
    assert job_deadline(1000.0, ModelSpec.preset("smollm2-135m")) == 1000.0 + 240 * 60
    monkeypatch.setenv("SLURM_JOB_END_TIME", "5000")
    assert job_deadline(1000.0, spec) == 5000.0


def test_only_configuration_travels_in_the_pickle() -> None:
    state = launcher(ModelSpec.preset("smollm2-135m")).__getstate__()
    assert set(state) == {"spec", "deployment", "registry_root"}
