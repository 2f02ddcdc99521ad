"""The API keys a front end accepts, read the same way by the router and by nginx: from a file
(one per line, ``#`` starts a comment) and from ``SLURM_LLM_API_KEYS`` (comma-separated). Not to
be confused with ``SLURM_LLM_API_KEY``, the one key a client (``slurm-llm bench``) sends."""

from __future__ import annotations

import os
from pathlib import Path

from slurm_llm._errors import SlurmLLMError

KEYS_ENV = "SLURM_LLM_API_KEYS"


def load_api_keys(
    path: Path | None = None, environ: dict[str, str] | None = None
) -> frozenset[str]:
    """Keys from a file (one per line, ``#`` starts a comment) and from ``SLURM_LLM_API_KEYS``."""
    keys: set[str] = set()
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise SlurmLLMError(f"cannot read the API key file {path}: {exc.strerror}") from exc
        keys.update(line.split("#", 1)[0].strip() for line in text.splitlines())
    env = os.environ if environ is None else environ
    keys.update(key.strip() for key in env.get(KEYS_ENV, "").split(","))
    keys.discard("")
    return frozenset(keys)
