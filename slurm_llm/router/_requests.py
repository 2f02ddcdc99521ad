"""Reading a client's request: JSON checked (depth first, then types), model served, affinity
key found."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any, Literal, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from slurm_llm.router._backends import BackendPool
from slurm_llm.router._errors import RouterError
from slurm_llm.router._schemas import InvalidRequest, check
from slurm_llm.router._state import MODEL, STATE

M = TypeVar("M", bound=BaseModel)
MAX_JSON_DEPTH = 64  # deeper than any chat, tool schema or batch needs; Python's parser recurses
STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
CONTAINERS = (dict, list)
DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
LONG_DIGITS = b"0" * 19  # an integer beyond 64 bits has 19 digits or more
BEYOND_64_BITS = 2.0**63  # orjson keeps -2**63 to 2**64 - 1; any other integer is this far out
STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def client_left(request: web.Request) -> Callable[[], bool]:
    """Whether the client has closed its connection: looked at while its request waits."""

    def left() -> bool:
        return request.transport is None or request.transport.is_closing()

    return left


async def read_json(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    """The raw body (forwarded as is) and its parsed object."""
    return parsed_json(await whole_body(request))


async def whole_body(request: web.Request) -> bytes:
    """The request's body. One that has arrived whole (nearly every request: a chat comes in
    the packets that bring its headers) is taken from aiohttp's buffer at once, where
    ``request.read`` would await it twice more and copy it twice: about 5 % of a small
    request's cost in the router (profiled). A body still arriving is left to ``read``; both
    refuse one over ``client_max_size`` (413), unless it is 0."""
    content = request.content
    if not content.is_eof():
        return await request.read()
    raw = content.read_nowait()
    limit = request.client_max_size  # 0: none, as for read
    if limit and len(raw) > limit:
        raise web.HTTPRequestEntityTooLarge(limit, len(raw))
    return raw


def parsed_json(raw: bytes) -> tuple[bytes, dict[str, Any]]:
    """``raw`` and its object: parsed by orjson, several times faster than the standard
    library. A body it refuses, or one where it may have read an integer beyond 64 bits as a
    float (a ``seed`` must reach the engine as sent, also when the router re-encodes the body),
    is read again by the standard library, which says precisely what is wrong, or accepts it (a
    lone surrogate in a string). Either way a body that nests deeper than ``MAX_JSON_DEPTH``
    is refused."""
    try:
        body = orjson.loads(raw)  # refuses past 1,024 levels, without recursing in Python
    except orjson.JSONDecodeError:
        pass
    else:
        if isinstance(body, dict):
            # Two scans of the bytes in C say whether the walk is needed: it is not for most
            # bodies, and they cost less than it for short ones.
            openings = raw.count(b"[") + raw.count(b"{")
            doubt = openings > MAX_JSON_DEPTH or LONG_DIGITS in raw.translate(DIGITS_AS_ZERO)
            concern = parsed_concern(body) if doubt else None
            if concern == "too deep":
                raise too_deep_error()
            if concern is None:
                return raw, body
    try:
        text = raw.decode("utf-8")  # json.loads would take UTF-16 too, which the scan misreads
    except UnicodeDecodeError:
        raise RouterError(400, "the request body is not UTF-8 text") from None
    if too_deep(raw):
        raise too_deep_error()
    try:
        body = json.loads(text, parse_constant=refuse_constant, parse_float=finite_float)
    except ValueError as exc:  # not JSON, or an integer of over 4,300 digits (Python's limit)
        raise RouterError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RouterError(400, "the request body must be a JSON object")
    return raw, body


def too_deep_error() -> RouterError:
    return RouterError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels")


def parsed_concern(
    value: object, limit: int = MAX_JSON_DEPTH
) -> Literal["too deep", "inexact"] | None:
    """What is wrong with a value orjson parsed: it nests deeper than ``limit``, or it holds a
    float that may have been an integer beyond 64 bits (orjson reads those as floats: any such
    float is whole and at least 2**63 in size). One walk, level by level, over the containers
    and their items, never a string's characters: it costs the same for a short prompt as for
    a long one full of brackets and digits, which a scan of the bytes could not."""
    level: list[dict[Any, Any] | list[Any]] = [value] if isinstance(value, CONTAINERS) else []
    for _ in range(limit):
        if not level:
            return None
        inner: list[dict[Any, Any] | list[Any]] = []
        for container in level:
            for item in container.values() if isinstance(container, dict) else container:
                if isinstance(item, CONTAINERS):
                    inner.append(item)
                elif type(item) is float and abs(item) >= BEYOND_64_BITS and item.is_integer():
                    return "inexact"
        level = inner  # the containers one level deeper
    return "too deep" if level else None


def too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a UTF-8 JSON text nests deeper than ``limit``, found without parsing it: strings
    removed, then brackets counted (Python's parser recurses, so a body nested 5,000 deep must
    be refused before the standard library parses it). A body with fewer openings than
    ``limit`` in all, strings included, is answered by two counts in C, without the scan."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # cannot be deeper than it has openings: the common case stops here
    brackets = STRINGS.sub(b"", raw).translate(None, NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return False  # only the strings held so many (brackets quoted in a prompt, say)
    return max(accumulate(STEP[b] for b in brackets)) > limit


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RouterError(400, f"the number {text} in the request body is out of range")
    return value


def refuse_constant(name: str) -> None:
    raise RouterError(400, f"the request body holds {name}, which JSON does not allow")


def validated(schema: type[M], body: object) -> M:
    """``body`` checked against its API's model; a 400 that names the field if it does not
    fit."""
    try:
        return check(schema, body)
    except InvalidRequest as exc:
        raise RouterError(400, str(exc), param=exc.field) from None


def served_model(request: web.Request, model: object) -> str:
    """``model`` if a replica serves it (and the request is counted under it in metrics)."""
    request[MODEL] = require_served(request.app[STATE].pool, model)
    return str(model)


def require_served(pool: BackendPool, model: object) -> str:
    """``model`` if a replica serves it or its elastic deployment can wake; a 503 to retry if
    one did lately (its replicas are being replaced, and a client should wait, not give up);
    else a 404 listing what is served."""
    if not isinstance(model, str):
        raise RouterError(400, "the field 'model' (a string) is required")
    if pool.serves(model):
        return model
    served = pool.models()
    if model not in served and pool.wakeable(model):
        return model  # scaled to zero, or being scaled down to zero: it waits for a wake-up
    if model not in served and pool.served_lately(model):
        raise RouterError(
            503, f"no replica of {model!r} is up right now (they are being replaced); "
            "retry shortly", "service_unavailable", retry_after=2,
        )  # fmt: skip
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
