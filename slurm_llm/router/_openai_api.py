"""The OpenAI-compatible API: chat and text completions (streamed or not) and the model list."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web

from slurm_llm.router import _tribunal_api
from slurm_llm.router._backends import Backend
from slurm_llm.router._dispatch import Call, GiveBack, Relay, Reply
from slurm_llm.router._failover import RelayFor, openai_plan, stream_with_failover
from slurm_llm.router._metrics import RouterMetrics
from slurm_llm.router._requests import affinity_key, read_json, served_model, validated
from slurm_llm.router._schemas import ENDPOINT_MODELS, ChatCompletionRequest
from slurm_llm.router._state import STATE
from slurm_llm.router._streams import DONE, ClientStream


async def completions(request: web.Request) -> web.StreamResponse:
    raw, body = await read_json(request)
    checked = validated(ENDPOINT_MODELS[request.path], body)
    model = served_model(request, checked.model)
    if isinstance(checked, ChatCompletionRequest) and checked.tribunal is not None:
        return await _tribunal_api.chat_with_tribunal(request, checked)
    state = request.app[STATE]
    call = Call(model, request.path, raw, affinity_key(request, body))
    if checked.stream:
        stream = ClientStream(request, broken_openai, closing=DONE + b"\n\n")
        relay_for = sse_relay(stream, state.metrics, model)
        outcome = await stream_with_failover(
            request, call, stream, relay_for, openai_plan(call, body)
        )
        return outcome if isinstance(outcome, web.StreamResponse) else as_response(outcome)
    reply = await state.dispatcher.send(call)
    if reply.status == 200:
        count_usage(state.metrics, model, reply.body)
    return as_response(reply)


def as_response(reply: Reply) -> web.Response:
    """The replica's answer as is; one that was the request's fault says not to retry it."""
    headers = {"X-Should-Retry": "false"} if reply.request_fault else None
    return web.Response(
        body=reply.body, status=reply.status, content_type=reply.content_type, headers=headers
    )


def count_usage(metrics: RouterMetrics, model: str, payload: bytes) -> None:
    try:
        usage = json.loads(payload).get("usage") or {}
    except (json.JSONDecodeError, AttributeError):
        return
    for kind in ("prompt", "completion"):
        if isinstance(tokens := usage.get(f"{kind}_tokens"), int):
            metrics.tokens.labels(model, kind).inc(tokens)


def broken_openai(error: str) -> bytes:
    message = f"the replica broke off the stream ({error}); the text so far is incomplete"
    event = {"error": {"message": message, "type": "upstream_error", "code": 502}}
    return f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n".encode()


def sse_relay(stream: ClientStream, metrics: RouterMetrics, model: str) -> RelayFor:
    """Passes the OpenAI stream through, timing its first byte and counting its events."""
    started = time.monotonic()
    first = True

    def seen(chunk: bytes) -> None:
        nonlocal first
        if first:
            metrics.first_byte.labels(model).observe(time.monotonic() - started)
            first = False
        events = chunk.count(b"data:") - chunk.count(b"[DONE]")
        metrics.tokens.labels(model, "completion").inc(max(events, 0))

    def relay_for(rewrite: Callable[[bytes], bytes]) -> Relay:
        async def relay(
            upstream: aiohttp.ClientResponse, backend: Backend, ended: GiveBack
        ) -> web.StreamResponse:
            return await stream.relay(upstream, backend, rewrite, seen, ended)

        return relay

    return relay_for


async def list_models(request: web.Request) -> web.Response:
    pool = request.app[STATE].pool
    data = [{"id": model, "object": "model", "owned_by": "slurm-llm"} for model in pool.models()]
    return web.json_response({"object": "list", "data": data})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", list_models)
