"""``/v1/tribunal`` and ``"tribunal": {...}`` on chat completions: the tribunal run inside the
router, on its own dispatcher (so critics are balanced, queued and retried like any request),
with the admission queue's load deciding how much it does.

Request: ``{"model": "smollm2", "prompt": "...", "laws": "academic", "only": ["formal-language"],
"critic_model": "bigger", "max_rounds": 3, "max_tokens": 256}``; ``laws`` is a shipped book's
name. The answer is the run: final answer, each round's draft and verdicts, accepted or not,
and the mode (full, reduced, base-only) with its reason.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from slurm_llm._errors import SpecError
from slurm_llm.router._dispatch import Call
from slurm_llm.router._errors import RouterError
from slurm_llm.router._metering import (
    CALLER,
    Meter,
    check_access,
    count_usage,
    metered,
    priority_of,
)
from slurm_llm.router._requests import read_json, require_served, served_model, validated
from slurm_llm.router._schemas import (
    ChatCompletionRequest,
    Content,
    TextPart,
    TribunalOptions,
    TribunalRequest,
)
from slurm_llm.router._state import STATE, RouterState
from slurm_llm.tribunal import (
    LawBook,
    Tribunal,
    TribunalConfig,
    TribunalResult,
    VerdictLog,
    law_books,
)
from slurm_llm.tribunal._tribunal import Messages


def tribunal_for(
    request: web.Request, generator: str, options: TribunalOptions, meter: Meter
) -> Tribunal:
    """The tribunal a request asks for, its calls in the caller's class and charged to the
    request's ``meter``. Only shipped law books: a client names a book, never a file on the
    router's machine."""
    state = request.app[STATE]
    if options.laws not in (shipped := law_books()):
        raise RouterError(
            400, f"no law book {options.laws!r}; shipped ones: {', '.join(shipped)}", param="laws"
        )
    try:
        book = LawBook.named(options.laws).only(options.only)
        config = TribunalConfig(
            generator=generator,
            critic=options.critic_model,
            max_rounds=options.max_rounds,
            answer_tokens=options.max_tokens,
        )
    except (SpecError, ValueError) as exc:
        raise RouterError(400, f"bad tribunal options: {exc}") from None
    if config.critic is not None:
        require_served(state.pool, config.critic)
        check_access(
            request.get(CALLER), config.critic
        )  # the key must be allowed the critic's model too

    priority = priority_of(request)  # the critics and revisions go in as the caller's class

    async def complete(model: str, messages: Messages, max_tokens: int) -> str:
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        call = Call(model, "/v1/chat/completions", json.dumps(body).encode(), priority=priority)
        reply = await state.dispatcher.send(call)
        if reply.status != 200:
            raise RouterError(502, f"{model!r} answered {reply.status} during the tribunal")
        meter.charge(reply, count_usage(state.metrics, model, reply.body))
        content = json.loads(reply.body)["choices"][0]["message"]["content"]
        return str(content or "")

    async def utilisation(model: str) -> float:
        return state.admission.load(model).utilisation

    log = VerdictLog(state.verdict_log)
    return Tribunal(complete, book, config, log, utilisation)


def text_of(content: Content | None) -> str:
    """A message's text: the string, or its text parts joined."""
    if isinstance(content, str) or content is None:
        return content or ""
    return "".join(part.text for part in content if isinstance(part, TextPart))


def count(state: RouterState, result: TribunalResult) -> None:
    outcome = {True: "accepted", False: "rejected", None: "not judged"}[result.accepted]
    state.metrics.tribunal_runs.labels(result.models["generator"], result.mode, outcome).inc()


async def tribunal(request: web.Request) -> web.Response:
    raw, body = await read_json(request)
    checked = validated(TribunalRequest, body)
    model = served_model(request, checked.model)
    state = request.app[STATE]
    with metered(request, model, request.path, body, len(raw)) as meter:
        result = await tribunal_for(request, model, checked, meter).run(checked.prompt)
        meter.status = 200
    count(state, result)
    return web.json_response(result.to_dict())


async def chat_with_tribunal(
    request: web.Request, body: ChatCompletionRequest, meter: Meter
) -> web.Response:
    """A chat completion whose answer went through the tribunal; the run rides along."""
    assert body.tribunal is not None
    if body.stream:
        raise RouterError(400, "a tribunal cannot be streamed: its answer exists only at the end")
    users = [m for m in body.messages if m.role == "user"]
    question = text_of(users[-1].content) if users else ""
    if not question:
        raise RouterError(400, "a tribunal needs a user message with text to answer")
    state = request.app[STATE]
    model = body.model
    result = await tribunal_for(request, model, body.tribunal, meter).run(question)
    count(state, result)
    return web.json_response({
        "id": f"chatcmpl-tribunal-{int(result.started * 1000)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer},
                     "finish_reason": "stop"}],
        "tribunal": result.to_dict(),
    })  # fmt: skip
