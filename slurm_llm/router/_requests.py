"""Reading a client's request: JSON checked, model served, affinity key found."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from slurm_llm.router._backends import BackendPool
from slurm_llm.router._errors import RouterError
from slurm_llm.router._state import MODEL, STATE


async def read_json(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    """The raw body (forwarded as is) and its parsed object."""
    raw = await request.read()
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RouterError(400, f"the request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise RouterError(400, "the request body is not UTF-8 text") from None
    if not isinstance(body, dict):
        raise RouterError(400, "the request body must be a JSON object")
    return raw, body


def served_model(request: web.Request, model: object) -> str:
    """``model`` if a replica serves it (and the request is counted under it in metrics)."""
    request[MODEL] = require_served(request.app[STATE].pool, model)
    return str(model)


def require_served(pool: BackendPool, model: object) -> str:
    """``model`` if a replica serves it; else a 404 that lists what is served."""
    if not isinstance(model, str):
        raise RouterError(400, "the field 'model' (a string) is required")
    served = pool.models()
    if model not in served:
        listed = ", ".join(served) or "none yet"
        raise RouterError(
            404, f"model {model!r} is not served here; available: {listed}", "not_found"
        )
    return model


def affinity_key(request: web.Request, body: dict[str, Any]) -> str | None:
    """The session header if sent; else the prompt's start when prefix affinity is on."""
    config = request.app[STATE].config
    session = request.headers.get(config.session_header)
    if session:
        return session
    if config.prefix_affinity_chars <= 0:
        return None
    prompt = body.get("prompt") or body.get("inputs")
    if prompt is None and isinstance(body.get("messages"), list):
        prompt = "".join(
            str(message.get("content", "")) for message in body["messages"]
            if isinstance(message, dict)
        )  # fmt: skip
    return str(prompt)[: config.prefix_affinity_chars] if prompt else None
