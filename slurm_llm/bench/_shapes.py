"""Paper-sized models with no download: directories vLLM serves with ``--load-format dummy``.

vLLM's dummy load format fills a model with random weights built from its ``config.json``, so a
directory holding only a config and a tokenizer has the compute and memory shape of the real
model: the paper's Llama 3.2 1B and 3B and Llama 3.1 8B and 70B, benchmarked where weights
cannot be downloaded (compute nodes without internet, CI). Answers are noise; speed is real.

The tokenizer is SmolLM2's (the one model available offline, ``slurm-llm prepare-model``), so the
default vocabulary is its 49,152 tokens instead of Llama 3's 128,256: the embedding and output
layers are smaller than the real ones (a few % of the FLOPs for 8B and 70B, more for 1B). Any
comparison with the paper must say so; ``vocab_size=128256`` gives the exact shape, but then
random weights can pick token ids the tokenizer cannot print.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from slurm_llm._errors import SpecError
from slurm_llm._files import write_atomic

SMOLLM2_VOCAB = 49152
LLAMA3_VOCAB = 128256
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "vocab.json", "merges.txt",
)  # fmt: skip

# The architecture fields of Meta's published config.json for each model.
PAPER_SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": {
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "tie_word_embeddings": True, "rope_factor": 32.0,
    },
    "llama-3.2-3b": {
        "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
        "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128,
        "tie_word_embeddings": True, "rope_factor": 32.0,
    },
    "llama-3.1-8b": {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "tie_word_embeddings": False, "rope_factor": 8.0,
    },
    "llama-3.1-70b": {
        "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128,
        "tie_word_embeddings": False, "rope_factor": 8.0,
    },
}  # fmt: skip


def llama_config(
    shape: str, vocab_size: int = SMOLLM2_VOCAB, dtype: str = "bfloat16"
) -> dict[str, Any]:
    """The ``config.json`` of a Llama 3.x model of the named shape."""
    if shape not in PAPER_SHAPES:
        raise SpecError(f"unknown model shape {shape!r}; known: {', '.join(PAPER_SHAPES)}")
    fields = dict(PAPER_SHAPES[shape])
    factor = fields.pop("rope_factor")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **fields,
        "vocab_size": vocab_size,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,  # SmolLM2's tokenizer's ids, since its tokenizer is used
        "eos_token_id": 2,
        "torch_dtype": dtype,
        "initializer_range": 0.02,
        "use_cache": True,
    }


def parameter_count(config: dict[str, Any]) -> int:
    """Weights in a Llama model of this config (embeddings, layers, norms, output layer)."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    head_dim, kv_heads = config["head_dim"], config["num_key_value_heads"]
    attention = (
        hidden * config["num_attention_heads"] * head_dim * 2 + hidden * kv_heads * head_dim * 2
    )
    mlp = 3 * hidden * config["intermediate_size"]
    embeddings = config["vocab_size"] * hidden * (1 if config["tie_word_embeddings"] else 2)
    return int(embeddings + layers * (attention + mlp + 2 * hidden) + hidden)


def write_dummy_model(
    dest: Path, shape: str, tokenizer_dir: Path, vocab_size: int = SMOLLM2_VOCAB
) -> Path:
    """``dest`` holds ``shape``'s config and ``tokenizer_dir``'s tokenizer; serve it with
    ``vllm serve DEST --load-format dummy``."""
    config = llama_config(shape, vocab_size)
    tokenizer_dir = Path(tokenizer_dir).expanduser()
    found = [name for name in TOKENIZER_FILES if (tokenizer_dir / name).is_file()]
    if "tokenizer.json" not in found:
        raise SpecError(
            f"{tokenizer_dir} has no tokenizer.json; make SmolLM2's directory first with "
            "`slurm-llm prepare-model` and pass it with --tokenizer"
        )
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    for name in found:
        shutil.copyfile(tokenizer_dir / name, dest / name)
    generation = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": False}
    write_atomic(dest / "generation_config.json", json.dumps(generation, indent=2))
    billions = parameter_count(config) / 1e9
    write_atomic(
        dest / "README.md",
        f"# {shape}, dummy weights ({billions:.2f} B parameters)\n\nThe shape of {shape} with "
        f"SmolLM2's tokenizer (vocabulary {vocab_size}). There are no weights: serve it with "
        "`vllm serve THIS_DIR --load-format dummy`. Made by `slurm-llm bench models`.\n",
    )
    # The config last: its presence is what marks the directory complete.
    write_atomic(dest / "config.json", json.dumps(config, indent=2))
    return dest
