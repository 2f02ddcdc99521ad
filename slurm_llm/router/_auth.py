"""Optional API keys: ``Authorization: Bearer <key>`` (what the openai client sends) or
``X-API-Key``. Keys are compared in constant time, and against every key, so neither the
comparison nor the key list leaks through timing."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from slurm_llm._errors import SlurmLLMError
from slurm_llm.router._errors import RouterError

KEYS_ENV = "SLURM_LLM_API_KEYS"  # comma-separated
# For load balancers and liveness checks, and the API's description (no secret in it).
OPEN_PATHS = frozenset({"/health", "/ready", "/openapi.json", "/docs"})


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


def presented_key(authorization: str | None, api_key_header: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return api_key_header


def check_key(presented: str | None, keys: frozenset[str]) -> None:
    if presented is None:
        raise RouterError(
            401,
            "this router needs an API key: send 'Authorization: Bearer <key>' "
            "(the openai client's api_key) or 'X-API-Key: <key>'",
            "authentication_error",
        )
    given = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    if not matched:
        raise RouterError(401, "the API key is not valid", "authentication_error")
