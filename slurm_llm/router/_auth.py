"""Optional API keys: ``Authorization: Bearer <key>`` (what the openai client sends) or
``X-API-Key``. Keys are compared in constant time, and against every key, so neither the
comparison nor the key list leaks through timing."""

from __future__ import annotations

import hmac

from slurm_llm.router._errors import RouterError

# For load balancers and liveness checks, and the API's description (no secret in it).
OPEN_PATHS = frozenset({"/health", "/ready", "/openapi.json", "/docs"})


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
