"""How many GPUs a model needs, from its size and precision.

Researchers usually know the model, not the number of GPUs that holds it. The rule here is the one
vLLM users apply by hand: weights = parameters x bytes per parameter; each GPU may give at most
``gpu_memory_utilization`` of its memory to vLLM, and a quarter of that must stay free for the KV
cache and activations, or the server starts but serves almost nobody. Tensor parallelism must
divide the attention heads (and should divide the KV heads), so candidates are the divisors of the
head count that fit on one node.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Precision = Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4"]

BYTES_PER_PARAMETER: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}

GPU_MEMORY_UTILIZATION = 0.9
KV_CACHE_SHARE = 0.25


@dataclass(frozen=True)
class ModelShape:
    """What resource derivation needs to know about a model."""

    parameters_b: float
    attention_heads: int | None = None
    kv_heads: int | None = None


def weights_gb(parameters_b: float, precision: str) -> float:
    return parameters_b * BYTES_PER_PARAMETER[precision]


def tensor_parallel_candidates(shape: ModelShape, gpus_per_node: int) -> list[int]:
    """Sizes that divide the attention heads and fit on one node, smallest first."""
    heads = shape.attention_heads
    return [n for n in range(1, gpus_per_node + 1) if heads is None or heads % n == 0]


def gpus_needed(
    shape: ModelShape, precision: str, gpu_memory_gb: float, gpus_per_node: int
) -> int | None:
    """The smallest valid tensor-parallel size whose GPUs hold the weights with KV headroom.

    None when no size on one node is enough; the caller turns that into a message with fixes.
    """
    budget_per_gpu = gpu_memory_gb * GPU_MEMORY_UTILIZATION * (1 - KV_CACHE_SHARE)
    need = weights_gb(shape.parameters_b, precision)
    for n in tensor_parallel_candidates(shape, gpus_per_node):
        if need / n <= budget_per_gpu:
            return n
    return None


def host_memory_gb(parameters_b: float, precision: str, gpus: int) -> int:
    """RAM for one replica: engines stage the weights in host memory while loading them."""
    return max(2, math.ceil(weights_gb(parameters_b, precision) * 1.2 + 4 + 2 * gpus))


def shape_from_config(model_dir: Path) -> ModelShape | None:
    """Reads a Hugging Face ``config.json`` so a local checkpoint needs no hand-typed shape.

    The parameter count is the dense decoder formula (embeddings, attention with grouped KV heads,
    gated MLP); it is within a few percent for Llama-family models, which is all sizing needs.
    """
    path = model_dir / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    try:
        hidden = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        intermediate = int(config["intermediate_size"])
        vocab = int(config["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    kv_heads = int(config.get("num_key_value_heads", heads))
    head_dim = int(config.get("head_dim", hidden // heads))
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * intermediate
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", False) else 2)
    total = layers * (attention + mlp + 2 * hidden) + embeddings + hidden
    return ModelShape(parameters_b=total / 1e9, attention_heads=heads, kv_heads=kv_heads)
