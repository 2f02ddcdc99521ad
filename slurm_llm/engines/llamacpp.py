"""llama.cpp's HTTP server for GGUF models, run through the ``xllamacpp`` wheel.

xllamacpp embeds the server in a Python extension, so the "executable" is a Python interpreter
running ``slurm_llm.engines.llamacpp_server``; ``engine_env`` picks which interpreter.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar

from slurm_llm.engines._base import Engine, LaunchContext
from slurm_llm.spec._model_spec import ModelSpec

SERVER_MODULE = "slurm_llm.engines.llamacpp_server"


class LlamaCppEngine(Engine):
    name: ClassVar[str] = "llamacpp"
    executable_name: ClassVar[str] = "python"

    def executable(self, spec: ModelSpec) -> str:
        if spec.engine_env is None:
            return sys.executable
        return str(Path(spec.engine_env).expanduser() / "bin" / "python")

    def request_context(self, spec: ModelSpec) -> int:
        """llama.cpp divides ``--ctx-size`` among its ``--parallel`` slots."""
        return spec.context_length // spec.max_concurrent_requests

    def arguments(self, spec: ModelSpec, ctx: LaunchContext) -> list[str]:
        args = [
            "-m", SERVER_MODULE,
            "--model", ctx.model_path,
            "--alias", spec.name,
            "--host", ctx.host,
            "--port", str(ctx.port),
            "--ctx-size", str(spec.context_length),
            "--parallel", str(spec.max_concurrent_requests),
            "--threads", str(ctx.cpus),
        ]  # fmt: skip
        if ctx.gpus:
            args += ["--n-gpu-layers", "999"]
        return args
