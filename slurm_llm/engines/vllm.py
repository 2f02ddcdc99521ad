"""vLLM's OpenAI-compatible server, CUDA or CPU build: ``vllm serve``."""

from __future__ import annotations

from typing import ClassVar

from slurm_llm.engines._base import Engine, LaunchContext
from slurm_llm.spec._model_spec import ModelSpec

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class VLLMEngine(Engine):
    name: ClassVar[str] = "vllm"
    executable_name: ClassVar[str] = "vllm"

    def arguments(self, spec: ModelSpec, ctx: LaunchContext) -> list[str]:
        args = [
            "serve", ctx.model_path,
            "--served-model-name", spec.name,
            "--host", ctx.host,
            "--port", str(ctx.port),
            "--tensor-parallel-size", str(max(len(ctx.gpus), 1)),
            "--max-model-len", str(spec.context_length),
            "--max-num-seqs", str(spec.max_concurrent_requests),
            "--dtype", _DTYPES.get(spec.precision, "auto"),
        ]  # fmt: skip
        if spec.quantization:
            args += ["--quantization", spec.quantization]
        if not _policy_given(spec):
            # Interactive requests ahead of batch ones inside the engine too; ties are served
            # in order of arrival, as with vLLM's default (fcfs).
            args += ["--scheduling-policy", "priority"]
        if ctx.nodes > 1:
            # Tensor parallel within a node (fast links), pipeline parallel across nodes.
            args += [
                "--pipeline-parallel-size", str(ctx.nodes),
                "--nnodes", str(ctx.nodes),
                "--node-rank", str(ctx.node_rank),
                "--master-addr", str(ctx.master_addr),
                "--master-port", str(ctx.master_port),
            ]  # fmt: skip
            if ctx.node_rank > 0:
                args.append("--headless")  # only rank 0 serves HTTP
        return args

    def takes_priority(self, spec: ModelSpec) -> bool:
        return not _policy_given(spec) or _engine_arg(spec, "--scheduling-policy") == "priority"

    def environment(self, spec: ModelSpec, ctx: LaunchContext) -> dict[str, str]:
        # VLLM_HOST_IP keeps vLLM's internal sockets on the address we serve from.
        env = {"VLLM_HOST_IP": ctx.host, "VLLM_NO_USAGE_STATS": "1"}
        if spec.device == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, (spec.memory_gb - 2) // 2))
            env["OMP_NUM_THREADS"] = str(ctx.cpus)
        return {**env, **super().environment(spec, ctx)}


def _policy_given(spec: ModelSpec) -> bool:
    return _engine_arg(spec, "--scheduling-policy") is not None


def _engine_arg(spec: ModelSpec, flag: str) -> str | None:
    """The value ``engine_args`` gives ``flag`` (``--flag value`` or ``--flag=value``)."""
    args = spec.engine_args
    for i, arg in enumerate(args):
        if arg == flag:
            return args[i + 1] if i + 1 < len(args) else ""
        if arg.startswith(flag + "="):
            return arg.partition("=")[2]
    return None
