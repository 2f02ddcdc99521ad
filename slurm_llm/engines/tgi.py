"""Hugging Face Text Generation Inference: ``text-generation-launcher``.

TGI shards a model with ``--num-shard``; it speaks its own ``/generate`` API and, since 1.4, the
OpenAI Messages API. Its binary needs CUDA, so on CPU-only machines only its command line is built.
"""

from __future__ import annotations

from typing import ClassVar

from slurm_llm._errors import EngineError
from slurm_llm.engines._base import Engine, LaunchContext, post_json
from slurm_llm.spec._model_spec import ModelSpec

_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


class TGIEngine(Engine):
    name: ClassVar[str] = "tgi"
    executable_name: ClassVar[str] = "text-generation-launcher"

    def arguments(self, spec: ModelSpec, ctx: LaunchContext) -> list[str]:
        args = [
            "--model-id", ctx.model_path,
            "--hostname", ctx.host,
            "--port", str(ctx.port),
            "--num-shard", str(max(len(ctx.gpus), 1)),
            "--max-input-tokens", str(spec.context_length - 1),
            "--max-total-tokens", str(spec.context_length),
            "--max-concurrent-requests", str(spec.max_concurrent_requests),
        ]  # fmt: skip
        if spec.quantization:
            args += ["--quantize", spec.quantization]
        elif spec.precision in _DTYPES:
            args += ["--dtype", _DTYPES[spec.precision]]
        return args

    def probe(self, spec: ModelSpec, url: str, timeout: float = 30.0) -> None:
        body = {"inputs": "Say hi.", "parameters": {"max_new_tokens": 1}}
        reply = post_json(f"{url}/generate", body, timeout)
        if "generated_text" not in reply:
            raise EngineError(f"{url}/generate answered without generated_text: {reply}")
