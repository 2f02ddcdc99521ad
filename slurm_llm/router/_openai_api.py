"""The OpenAI-compatible API: chat and text completions (streamed or not) and the model list."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from slurm_llm._sse import json_event
from slurm_llm.router import _json, _tribunal_api
from slurm_llm.router._admission import Rejected
from slurm_llm.router._backends import Backend
from slurm_llm.router._dispatch import Call, GiveBack, Relay, Reply
from slurm_llm.router._elastic import refuse_cold_start, tell_progress
from slurm_llm.router._errors import RouterError
from slurm_llm.router._failover import RelayFor, openai_plan, stream_with_failover
from slurm_llm.router._metering import Meter, count_usage, metered
from slurm_llm.router._metrics import RouterMetrics
from slurm_llm.router._requests import (
    affinity_key,
    client_left,
    read_json,
    served_model,
    validated,
)
from slurm_llm.router._routes import Routes
from slurm_llm.router._schemas import ENDPOINT_MODELS, ChatCompletionRequest
from slurm_llm.router._state import STATE, STATUS
from slurm_llm.router._streams import DONE, EVENT_END, ClientStream
from slurm_llm.router._upstream import Answer


async def completions(request: web.Request) -> web.StreamResponse:
    raw, body = await read_json(request)
    checked = validated(ENDPOINT_MODELS[request.path], body)
    model = served_model(request, checked.model)
    state = request.app[STATE]
    with metered(request, model, request.path, body, len(raw)) as meter:
        if isinstance(checked, ChatCompletionRequest) and checked.tribunal is not None:
            answered = await _tribunal_api.chat_with_tribunal(request, checked, meter)
            meter.status = answered.status
            return answered
        if checked.stream:
            return await streamed(request, model, raw, body, meter)
        if state.config.cold_start == "reject" and state.pool.waking(model):
            raise refuse_cold_start(state.pool, state.admission, model)
        call = Call(model, request.path, raw, affinity_key(request, body),
                    priority=meter.priority, left=client_left(request))  # fmt: skip
        reply = await state.dispatcher.send(call)
        meter.answered(reply)
        if reply.status == 200:
            meter.read_usage(count_usage(state.metrics, model, reply.body))
        return as_response(reply)


async def streamed(
    request: web.Request, model: str, raw: bytes, body: dict[str, Any], meter: Meter
) -> web.StreamResponse:
    """The stream, asked for its usage (for the meter), which the client gets only if it asked
    too; continued on another replica if its replica breaks off."""
    options = body.get("stream_options")
    asked = isinstance(options, dict) and options.get("include_usage") is True
    if not asked:
        body = {**body, "stream_options": {**(options or {}), "include_usage": True}}
        raw = _json.dumps(body)
    call = Call(model, request.path, raw, affinity_key(request, body),
                priority=meter.priority, left=client_left(request))  # fmt: skip
    stream = ClientStream(request, broken_openai, closing=DONE + b"\n\n")
    state = request.app[STATE]
    relay_for = sse_relay(stream, state.metrics, model, meter, keep_usage=asked)
    progress = None
    if state.pool.waking(model):
        progress = asyncio.create_task(tell_progress(stream, state.pool, model))
    try:
        outcome: web.StreamResponse | Reply | RouterError = await stream_with_failover(
            request, call, stream, relay_for, openai_plan(call, body)
        )
    except RouterError as exc:
        if not stream.response.prepared:
            raise
        outcome = exc  # the stream is open (it waited for a wake-up): the error goes in it
        if isinstance(exc, Rejected):
            state.metrics.rejections.labels(model, exc.reason).inc()
    finally:
        if progress is not None:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
    if isinstance(outcome, web.StreamResponse):
        meter.streamed(stream)
        return outcome
    if isinstance(outcome, Reply):
        meter.answered(outcome)
        if not stream.response.prepared:
            return as_response(outcome)
        outcome = RouterError(outcome.status, outcome.body.decode(errors="replace")[:2000],
                              "upstream_error")  # fmt: skip
    meter.status = request[STATUS] = outcome.status
    return await stream.end_with(openai_error_event(outcome))


def as_response(reply: Reply) -> web.Response:
    """The replica's answer as is; one that was the request's fault says not to retry it."""
    headers = {"X-Should-Retry": "false"} if reply.request_fault else None
    return web.Response(
        body=reply.body, status=reply.status, content_type=reply.content_type, headers=headers
    )


def openai_error_event(exc: RouterError) -> bytes:
    """An error as the last event of a stream that is already open, then its end."""
    event = {"error": {"message": exc.message, "type": exc.kind, "code": exc.status}}
    return f"data: {json.dumps(event)}\n\n".encode() + DONE + EVENT_END


def broken_openai(error: str) -> bytes:
    message = f"the replica broke off the stream ({error}); the text so far is incomplete"
    return openai_error_event(RouterError(502, message, "upstream_error"))


def sse_relay(
    stream: ClientStream, metrics: RouterMetrics, model: str, meter: Meter, keep_usage: bool
) -> RelayFor:
    """Passes the OpenAI stream through, timing its first byte and counting its events; the
    usage event goes to the meter, and to the client only if ``keep_usage``."""
    started = time.monotonic()
    first = True

    def seen(chunk: bytes) -> None:
        nonlocal first
        if first:
            metrics.first_byte_after(model, time.monotonic() - started)
            first = False
        events = chunk.count(b"data:") - chunk.count(b"[DONE]")
        if events > 0:
            metrics.used(model, 0, events)

    def relay_for(rewrite: Callable[[bytes], bytes]) -> Relay:
        async def relay(upstream: Answer, backend: Backend, ended: GiveBack) -> web.StreamResponse:
            translate = metered_events(rewrite, meter, keep_usage)
            return await stream.relay(upstream, backend, translate, seen, ended)

        return relay

    return relay_for


def metered_events(
    rewrite: Callable[[bytes], bytes], meter: Meter, keep_usage: bool
) -> Callable[[bytes], bytes]:
    """``rewrite``, then the usage read off the events (as the client would see it, after a
    continuation's rewriting), and the usage-only event dropped unless the client asked."""

    def translate(whole: bytes) -> bytes:
        out = rewrite(whole)
        if b'"usage"' not in out:
            return out
        kept = []
        for event in out.split(EVENT_END):
            payload = json_event(event)
            if payload is not None and payload.get("usage"):
                meter.read_usage(payload["usage"])
                if not keep_usage and not payload.get("choices"):
                    continue
            kept.append(event)
        return EVENT_END.join(kept)

    return translate


async def list_models(request: web.Request) -> web.Response:
    """The models served, and those of elastic deployments at zero replicas, with their state
    (``ready``, ``waking``, ``scaled to zero``) and, for elastic ones, their replica counts."""
    pool = request.app[STATE].pool
    served = pool.models()
    data: list[dict[str, Any]] = []
    for model in sorted({*served, *pool.wakeable_models()}):
        entry: dict[str, Any] = {"id": model, "object": "model", "owned_by": "slurm-llm"}
        record = pool.elastic.get(model)
        if model in served:
            entry["state"] = "ready"
        else:
            assert record is not None
            entry["state"] = "scaled to zero" if record.desired == 0 else "waking"
        if record is not None:
            entry["replicas"] = {"ready": record.ready, "desired": record.desired,
                                 "min": record.bounds.min_replicas,
                                 "max": record.bounds.max_replicas}  # fmt: skip
        data.append(entry)
    return web.json_response({"object": "list", "data": data})


def add_routes(routes: Routes) -> None:
    routes.post("/v1/chat/completions", completions)
    routes.post("/v1/completions", completions)
    routes.get("/v1/models", list_models)
