"""TGI's native routes, for code written against the ``text-generation`` client.

TGI serves one model per server, so its requests name no model. Here the model comes from the
base URL, ``http://router/models/<model>`` (the client posts to its base URL, or to
``/generate`` and ``/generate_stream`` under it); the bare routes work when one model is served.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from slurm_llm.router import _json
from slurm_llm.router._backends import Backend
from slurm_llm.router._dispatch import Call, GiveBack, Relay, Reply
from slurm_llm.router._errors import RouterError
from slurm_llm.router._failover import (
    Plan,
    RelayFor,
    SentSoFar,
    openai_plan,
    stream_with_failover,
)
from slurm_llm.router._metering import metered
from slurm_llm.router._requests import (
    affinity_key,
    client_left,
    read_json,
    served_model,
    validated,
)
from slurm_llm.router._routes import Routes
from slurm_llm.router._schemas import GenerateRequest
from slurm_llm.router._state import STATE
from slurm_llm.router._streams import ClientStream, unchanged
from slurm_llm.router._tgi_translation import (
    StreamTranslator,
    error_body,
    from_completion,
    sse,
    to_completion,
)
from slurm_llm.router._upstream import Answer


def is_tgi_path(path: str) -> bool:
    return path == "/" or path.startswith("/models/") or path in ("/generate", "/generate_stream")


def tgi_error(exc: RouterError) -> web.Response:
    """TGI's error shape, with the ``error_type`` its client turns into the right exception."""
    kinds = {400: "validation", 422: "validation", 429: "overloaded", 503: "overloaded"}
    body: dict[str, str] = {"error": exc.message}
    if exc.status in kinds:
        body = error_body(exc.message, kinds[exc.status])
    return web.json_response(body, status=exc.status, headers=exc.headers())


def requested_model(request: web.Request) -> str:
    if "model" in request.match_info:
        return served_model(request, request.match_info["model"])
    served = request.app[STATE].pool.models()
    if len(served) == 1:
        return served_model(request, served[0])
    raise RouterError(
        400 if served else 503,
        f"this router serves {len(served)} models ({', '.join(served) or 'none yet'}); "
        "use http://<router>/models/<model> as the text-generation client's base URL",
    )


async def generate(request: web.Request) -> web.StreamResponse:
    raw, body = await read_json(request)
    checked = validated(GenerateRequest, body)
    model = requested_model(request)
    streamed = request.path.endswith("/generate_stream") or (
        not request.path.endswith("/generate") and bool(body.get("stream"))
    )
    completion = to_completion(checked, model, streamed)
    native = ("/generate_stream" if streamed else "/generate", raw)
    dispatcher = request.app[STATE].dispatcher
    with metered(request, model, "/generate", completion, len(raw)) as meter:
        call = Call(model, "/v1/completions", _json.dumps(completion),
                    affinity_key(request, body), tgi=native, priority=meter.priority,
                    left=client_left(request))  # fmt: skip
        if streamed:
            stream = ClientStream(request, broken_tgi)
            plan = tgi_plan(call, completion)
            relay_for = tgi_relay(stream, body)
            outcome = await stream_with_failover(request, call, stream, relay_for, plan)
            if isinstance(outcome, web.StreamResponse):
                meter.streamed(stream)
                return outcome
            reply = outcome
        else:
            reply = await dispatcher.send(call)
        meter.answered(reply)
        answer = tgi_answer(reply, body)
        if reply.backend.engine != "tgi":  # an OpenAI completion, translated: its usage
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                meter.read_usage(json.loads(reply.body).get("usage"))
    as_list = request.path in ("/", f"/models/{model}")
    return web.json_response([answer] if as_list else answer)


def tgi_answer(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    """The ``/generate`` answer, from a TGI replica as is, from others translated."""
    try:
        payload = json.loads(reply.body)
    except json.JSONDecodeError:
        raise RouterError(502, f"the replica answered {reply.status} with no JSON") from None
    if reply.status != 200:
        error = payload.get("error", payload) if isinstance(payload, dict) else payload
        message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
        raise RouterError(
            reply.status,
            f"the replica refused the request: {message}",
            retry=not reply.request_fault,
        )
    if reply.backend.engine == "tgi":
        return payload[0] if isinstance(payload, list) else payload  # type: ignore[no-any-return]
    return from_completion(payload, body)


def broken_tgi(error: str) -> bytes:
    return sse(error_body(f"the replica broke off the stream ({error})", "incomplete_generation"))


def tgi_relay(stream: ClientStream, body: dict[str, Any]) -> RelayFor:
    """TGI events: passed through from TGI replicas, translated from the others (by one
    translator across a continuation, so the token index and the final text run on)."""
    translator = StreamTranslator(body)

    def relay_for(rewrite: Callable[[bytes], bytes]) -> Relay:
        async def relay(upstream: Answer, backend: Backend, ended: GiveBack) -> web.StreamResponse:
            # TGI's own stream has no end marker: that replica is given back when it closes.
            # A continuation asks any replica for an OpenAI completion, translated here.
            native = backend.engine == "tgi" and rewrite is unchanged
            translate = unchanged if native else translator.feed
            return await stream.relay(upstream, backend, translate, ended=ended)

        return relay

    return relay_for


def translated(chunk: bytes) -> bytes:
    """Marks a continuation: its answer is OpenAI's, whichever replica it comes from."""
    return chunk


def tgi_plan(call: Call, completion: dict[str, Any]) -> Plan:
    """A translated TGI stream continues as the text completion it was translated into."""
    plan = openai_plan(replace(call, tgi=None), completion)

    def plan_tgi(sent: SentSoFar) -> tuple[Call, Callable[[bytes], bytes]] | None:
        planned = plan(sent)
        return None if planned is None else (planned[0], translated)  # the translator rewrites

    return plan_tgi


def add_routes(routes: Routes) -> None:
    for prefix in ("", "/models/{model}"):
        routes.post(prefix or "/", generate)
        routes.post(f"{prefix}/generate", generate)
        routes.post(f"{prefix}/generate_stream", generate)
