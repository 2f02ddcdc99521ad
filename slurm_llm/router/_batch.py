"""``/v1/batch``: many requests in one call, run concurrently, answered together and in order.

Each item is an ordinary chat or text completion and goes through the same admission, balancing
and retries as a request of its own; an item that fails is reported in its place, so one bad
prompt never costs the rest of the batch. A batch keeps at most as many items in flight as the
model's replicas take at once, and its items may wait past the queue bound (the batch bounds
them itself), so a large batch neither gets rejected nor starves interactive requests, which
queue between its items.

Request::

    {"model": "smollm2", "endpoint": "/v1/chat/completions",
     "defaults": {"max_tokens": 64},
     "requests": [{"messages": [...]}, {"messages": [...], "max_tokens": 8}, ...]}

An item may name its own ``model``. Answer: ``{"object": "batch", "results": [{"index": 0,
"status": 200, "response": {...}}, {"index": 1, "status": 400, "error": {...}}, ...],
"succeeded": n, "failed": m}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web

from slurm_llm._api_keys import Identity, Priority
from slurm_llm.router import _json
from slurm_llm.router._dispatch import Call, Reply
from slurm_llm.router._errors import RouterError
from slurm_llm.router._limits import LimitHit
from slurm_llm.router._metering import CALLER, MeteredCall, check_access, count_usage, priority_of
from slurm_llm.router._requests import read_json, require_served, validated
from slurm_llm.router._schemas import ENDPOINT_MODELS, BatchRequest
from slurm_llm.router._state import MODEL, STATE, RouterState


async def batch(request: web.Request) -> web.Response:
    _, raw_body = await read_json(request)
    body = validated(BatchRequest, raw_body)
    state = request.app[STATE]
    endpoint, items, defaults = body.endpoint, body.requests, body.defaults
    if len(items) > state.config.max_batch_items:
        raise RouterError(
            413,
            f"the batch has {len(items)} requests; this router takes at most "
            f"{state.config.max_batch_items} per call: split it",
        )
    if body.model is not None:
        request[MODEL] = body.model
        defaults = {"model": body.model, **defaults}
    limits: dict[str, asyncio.Semaphore] = {}
    results = await asyncio.gather(
        *(
            run_item(request, endpoint, index, item, defaults, limits)
            for index, item in enumerate(items)
        )
    )
    failed = sum("error" in result for result in results)
    return web.json_response(
        {
            "object": "batch",
            "results": results,
            "succeeded": len(results) - failed,
            "failed": failed,
        }
    )


async def run_item(
    request: web.Request,
    endpoint: str,
    index: int,
    item: object,
    defaults: dict[str, Any],
    limits: dict[str, asyncio.Semaphore],
) -> dict[str, Any]:
    """One item, metered as a request of the caller's own (limits, priority, usage)."""
    state = request.app[STATE]
    try:
        if not isinstance(item, dict):
            raise RouterError(400, "each request must be a JSON object")
        merged = {**defaults, **item}
        model = require_served(state.pool, validated(ENDPOINT_MODELS[endpoint], merged).model)
        if merged.get("stream"):
            raise RouterError(400, "batch requests cannot be streamed; drop 'stream'")
        if model not in limits:  # the replicas' capacity, or the key's own concurrency limit
            caller = request.get(CALLER)
            own = caller.concurrent_requests if caller is not None else None
            capacity = max(1, state.admission.load(model).capacity)
            limits[model] = asyncio.Semaphore(min(capacity, own or capacity))
        reply = await send_item(request, model, endpoint, merged, limits[model])
    except RouterError as exc:
        return {
            "index": index,
            "status": exc.status,
            "error": {"message": exc.message, "type": exc.kind, "param": exc.param},
        }
    try:
        payload = json.loads(reply.body)
    except json.JSONDecodeError:
        payload = reply.body.decode(errors="replace")
    if reply.status != 200:
        return {"index": index, "status": reply.status, "error": payload}
    return {"index": index, "status": 200, "response": payload}


async def send_item(
    request: web.Request,
    model: str,
    endpoint: str,
    merged: dict[str, Any],
    limit: asyncio.Semaphore,
) -> Reply:
    caller = request.get(CALLER)
    check_access(caller, model)
    return await send_metered(
        request.app[STATE], caller, priority_of(request), model, endpoint, merged, limit
    )


async def send_metered(
    state: RouterState,
    caller: Identity | None,
    priority: Priority,
    model: str,
    endpoint: str,
    body: dict[str, Any],
    limit: asyncio.Semaphore | None = None,
) -> Reply:
    """One request of a batch (``/v1/batch`` items, durable batches' lines), metered as
    ``caller``'s. A request over one of its key's limits waits for the Retry-After and tries
    again, within the request deadline: a batch is work to get through, not a burst to refuse,
    and its requests are the key's own."""
    raw = _json.dumps(body)
    deadline = time.monotonic() + state.config.deadline_s
    while True:
        try:
            async with limit or contextlib.nullcontext():
                if (reading := state.limiter.read_ahead(caller)) is not None:  # a batch at 0:00
                    await reading
                with MeteredCall(state, caller, priority, model, endpoint, body, len(raw)) as meter:
                    call = Call(model, endpoint, raw, priority=meter.priority)
                    reply = await state.dispatcher.send(call, bounded=False)
                    meter.answered(reply)
                    if reply.status == 200:
                        meter.read_usage(count_usage(state.metrics, model, reply.body))
                    return reply
        except LimitHit as hit:
            wait = hit.retry_after or 1
            if time.monotonic() + wait > deadline:
                raise
            await asyncio.sleep(wait)
