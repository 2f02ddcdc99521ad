"""``/v1/map_reduce``: an instruction over a text longer than the model's context, answered by
chunked map-reduce on the router's own replicas, optionally judged by the tribunal after.

Request: ``{"model": "smollm2", "instruction": "Summarise.", "text": "...", "max_tokens": 128,
"overlap": 64, "tribunal": {"laws": "academic"}}``. The context comes from the replicas'
records (what one request may use); ``"context"`` overrides it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from aiohttp import web

from slurm_llm.router._admission import usable
from slurm_llm.router._backends import Backend
from slurm_llm.router._dispatch import Call
from slurm_llm.router._errors import RouterError
from slurm_llm.router._metering import Meter, count_usage, metered, priority_of
from slurm_llm.router._requests import read_json, served_model, validated
from slurm_llm.router._schemas import MapReduceRequest
from slurm_llm.router._state import STATE, RouterState
from slurm_llm.router._tribunal_api import count, tribunal_for
from slurm_llm.router._upstream import UpstreamError, Upstreams
from slurm_llm.tribunal._map_reduce import MapReduce, MapReduceError
from slurm_llm.tribunal._tribunal import Messages

TOKENIZE_TIMEOUT_S = 300.0


class ReplicaTokenizer:
    """The model's own tokenizer, through a replica's ``/tokenize`` and ``/detokenize``."""

    def __init__(self, upstreams: Upstreams, backend: Backend) -> None:
        if backend.engine == "tgi":
            raise RouterError(400, "map-reduce needs /detokenize, which TGI replicas lack")
        self.upstreams = upstreams
        self.backend = backend

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        where = f"{self.backend.url}{path}"
        try:
            status, payload = await self.upstreams.fetch(
                self.backend.url, path, json.dumps(body).encode(), TOKENIZE_TIMEOUT_S
            )
        except (TimeoutError, UpstreamError) as exc:
            raise RouterError(502, f"{where} did not answer ({exc})") from None
        if status != 200:
            raise RouterError(502, f"{where} answered {status}")
        answer: dict[str, Any] = json.loads(payload)
        return answer

    async def tokenize(self, text: str) -> list[int]:
        if self.backend.engine == "llamacpp":
            answer = await self._post("/tokenize", {"content": text})
        else:
            answer = await self._post("/tokenize", {"model": self.backend.model, "prompt": text})
        return [int(token) for token in answer["tokens"]]

    async def detokenize(self, tokens: list[int]) -> str:
        if self.backend.engine == "llamacpp":
            return str((await self._post("/detokenize", {"tokens": tokens}))["content"])
        body = {"model": self.backend.model, "tokens": tokens}
        return str((await self._post("/detokenize", body))["prompt"])


def context_of(state: RouterState, model: str, body: MapReduceRequest) -> int:
    if body.context is not None:
        return body.context
    known = [b.context for b in state.pool.of(model) if b.context]
    if not known:
        raise RouterError(
            400, f"the replicas of {model!r} do not say their context; pass 'context'"
        )
    return min(known)


async def map_reduce(request: web.Request) -> web.Response:
    raw, raw_body = await read_json(request)
    body = validated(MapReduceRequest, raw_body)
    model = served_model(request, body.model)
    with metered(request, model, request.path, raw_body, len(raw)) as meter:
        answered = await run_map_reduce(request, body, model, meter)
        meter.status = answered.status
        return answered


async def run_map_reduce(
    request: web.Request, body: MapReduceRequest, model: str, meter: Meter
) -> web.Response:
    """The map-reduce, and the tribunal after it if asked, every call charged to ``meter``."""
    state = request.app[STATE]
    replicas = usable(state.pool.of(model), time.monotonic()) or state.pool.of(model)
    tokenizer = ReplicaTokenizer(state.dispatcher.upstreams, replicas[0])
    priority = priority_of(request)  # every chunk's call goes in as the caller's class

    async def complete(messages: Messages, max_tokens: int) -> tuple[str, int]:
        payload = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        call = Call(model, "/v1/chat/completions", json.dumps(payload).encode(), priority=priority)
        reply = await state.dispatcher.send(call)
        if reply.status != 200:
            raise RouterError(502, f"{model!r} answered {reply.status}: {reply.body[:300]!r}")
        meter.charge(reply, count_usage(state.metrics, model, reply.body))
        answer = json.loads(reply.body)
        content = answer["choices"][0]["message"]["content"] or ""
        return str(content), int((answer.get("usage") or {}).get("prompt_tokens", 0))

    try:
        job = MapReduce(complete, tokenizer, context_of(state, model, body),
                        body.max_tokens, body.overlap)  # fmt: skip
        result = await job.run(body.instruction, body.text)
    except (MapReduceError, ValueError) as exc:
        raise RouterError(400, str(exc)) from None
    answer: dict[str, Any] = {**asdict(result), "context": job.context}
    if body.tribunal is not None:
        run = await tribunal_for(request, model, body.tribunal, meter).run(
            body.instruction, draft=result.answer
        )
        count(state, run)
        answer["answer"] = run.answer
        answer["tribunal"] = run.to_dict()
    return web.json_response(answer)
