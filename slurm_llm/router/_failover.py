"""Mid-stream failover: a stream whose replica breaks off after tokens were sent is continued on
another replica, so the client sees one uninterrupted stream.

The continuation asks the next replica for the rest of the same answer: a text completion gets
the prompt plus the text already sent; a chat gets the messages plus the partial answer as a
final assistant message to continue (llama.cpp continues a final assistant message by itself;
vLLM does with ``continue_final_message``, sent with ``add_generation_prompt: false``). Its
``max_tokens`` is what is left. Its events are rewritten to carry the first replica's id and
creation time, the role-only opening event of a chat is dropped, and its ``usage`` counts the
tokens sent before the break as completion tokens, not prompt tokens.

A stream is continued only where a continuation means the same thing: one choice (``n`` 1), a
prompt that is one string, no tool calls begun, no ``echo``, and a replica that speaks the
OpenAI API (a TGI replica's native stream is not continued). It is on by default, off for the
router with ``stream_failover=False`` and for one request with ``X-Stream-Failover: off``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from slurm_llm._sse import json_event
from slurm_llm.router import _json
from slurm_llm.router._admission import ClientLeft
from slurm_llm.router._dispatch import Call, Relay, Reply
from slurm_llm.router._errors import RouterError
from slurm_llm.router._metrics import RouterMetrics
from slurm_llm.router._state import STATE
from slurm_llm.router._streams import ClientStream, unchanged

OPT_OUT_HEADER = "X-Stream-Failover"
MAX_CONTINUATIONS = 3  # a stream broken more often than this ends with the error event
CHAT = "/v1/chat/completions"


@dataclass(frozen=True)
class SentSoFar:
    """What a client has been sent of one OpenAI stream."""

    text: str
    pieces: int  # token events: one token each in llama.cpp's and vLLM's default streams
    id: str | None
    created: int | None
    finished: bool  # a finish_reason was sent: the answer is whole
    continuable: bool  # one choice, no tool calls, no reasoning


def sent_so_far(forwarded: list[bytes]) -> SentSoFar:
    text: list[str] = []
    first: dict[str, Any] = {}
    finished, continuable = False, True
    for payload in events(b"".join(forwarded)):
        first = first or payload
        for choice in payload.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continuable = False
                continue
            given = choice.get("delta")
            delta: dict[str, Any] = given if isinstance(given, dict) else {}
            if delta.get("tool_calls") or delta.get("function_call"):
                continuable = False
            if delta.get("reasoning_content") or delta.get("reasoning"):
                continuable = False  # a continuation cannot carry the thinking on
            piece = delta.get("content") if "delta" in choice else choice.get("text")
            # One event per token, though a token may carry no text yet (half a character);
            # a chat's opening event (the role) is no token.
            if isinstance(piece, str) and "role" not in delta:
                text.append(piece)
            finished = finished or choice.get("finish_reason") is not None
    return SentSoFar("".join(text), len(text), first.get("id"), first.get("created"),
                     finished, continuable)  # fmt: skip


def events(data: bytes) -> list[dict[str, Any]]:
    """The JSON objects of the ``data:`` events in ``data`` (other lines are skipped)."""
    return [p for line in data.splitlines() if (p := json_event(line)) is not None]


CONSTRAINED = ("response_format", "grammar", "json_schema", "guided_json", "guided_regex",
               "guided_choice", "guided_grammar", "structured_outputs")  # fmt: skip


def continuation_body(path: str, body: dict[str, Any], sent: SentSoFar) -> dict[str, Any] | None:
    """The request for the rest of the answer, or None when it cannot mean the same thing:
    several choices, echo, or output held to a grammar (which would start over)."""
    if not sent.continuable or (body.get("n") or 1) != 1 or body.get("echo"):
        return None
    if any(body.get(field) for field in CONSTRAINED if field != "response_format") or (
        isinstance(body.get("response_format"), dict)
        and body["response_format"].get("type") not in (None, "text")
    ):
        return None
    if not sent.pieces:
        return dict(body)  # nothing was sent: the same request again
    rest = dict(body)
    for limit in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(limit), int):
            if body[limit] - sent.pieces < 1:
                return None
            rest[limit] = body[limit] - sent.pieces
    if path == CHAT:
        messages = list(body["messages"])
        last = messages[-1] if messages else {}
        if last.get("role") == "assistant" and isinstance(last.get("content"), str):
            messages[-1] = {**last, "content": last["content"] + sent.text}  # a prefill of its own
        else:
            messages.append({"role": "assistant", "content": sent.text})
        rest["messages"] = messages
        rest["continue_final_message"] = True
        rest["add_generation_prompt"] = False
        return rest
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        return None  # token ids or several prompts
    rest["prompt"] = prompt + sent.text
    return rest


def continued_events(path: str, sent: SentSoFar) -> Callable[[bytes], bytes]:
    """Rewrites a continuation's events into the first stream's: its id and creation time, no
    second role event, usage counting the tokens sent before the break as completion."""

    def rewrite(whole: bytes) -> bytes:
        out = []
        for line in whole.split(b"\n\n"):
            payload = json_event(line)
            if payload is None:
                out.append(line)
                continue
            if sent.id is not None:
                payload["id"], payload["created"] = sent.id, sent.created
            if isinstance(usage := payload.get("usage"), dict):
                prompt = usage.get("prompt_tokens")
                completion = usage.get("completion_tokens")
                if isinstance(prompt, int) and isinstance(completion, int):
                    moved = min(sent.pieces, prompt)
                    usage["prompt_tokens"], usage["completion_tokens"] = (
                        prompt - moved, completion + moved
                    )  # fmt: skip
            elif path == CHAT and sent.pieces and only_opens(payload):
                continue
            out.append(b"data: " + json.dumps(payload).encode())  # -Infinity kept
        return b"\n\n".join(out)

    return rewrite


def only_opens(payload: dict[str, Any]) -> bool:
    """A chat event that only says the assistant is speaking: the client already had one."""
    choices = payload.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return False  # an error event, usage, several choices: passed on
    delta = choices[0].get("delta")
    return (
        isinstance(delta, dict)
        and "role" in delta
        and not delta.get("content")
        and choices[0].get("finish_reason") is None
        and set(delta) <= {"role", "content"}
    )


# Builds the relay for one replica's stream, given how to rewrite its events for the client.
RelayFor = Callable[[Callable[[bytes], bytes]], Relay]
# Rewrites the request for the rest of the answer: its (path, body) from the original's.
Plan = Callable[[SentSoFar], tuple[Call, Callable[[bytes], bytes]] | None]


async def stream_with_failover(
    request: web.Request, call: Call, stream: ClientStream, relay_for: RelayFor, plan: Plan
) -> web.StreamResponse | Reply:
    """The client's stream, continued on other replicas after breaks; or the first replica's
    non-200 answer (which was not streamed)."""
    state = request.app[STATE]
    outcome = await state.dispatcher.stream(call, relay_for(unchanged))
    if isinstance(outcome, Reply):
        return outcome
    enabled = state.config.stream_failover and request.headers.get(
        OPT_OUT_HEADER, "on"
    ).lower() not in ("off", "false", "0")
    for _ in range(MAX_CONTINUATIONS):
        if stream.broken is None or not enabled or any(r.engine == "tgi" for r in stream.replicas):
            break
        if len(stream.errors) > 1:  # two replicas failed it with errors of their own
            count(state.metrics, call.model, "request_fault")
            break
        sent = sent_so_far(stream.forwarded)
        if sent.finished:  # it broke after the answer's end, before [DONE]: nothing is missing
            stream.broken = None
            break
        planned = plan(sent)
        if planned is None:
            count(state.metrics, call.model, "not_continuable")
            break
        next_call, rewrite = planned
        next_call = replace(next_call, avoid=frozenset(r.url for r in stream.replicas))
        continued: web.StreamResponse | Reply | None = None
        try:
            continued = await state.dispatcher.stream(next_call, relay_for(rewrite))
        except ClientLeft:  # while the continuation waited: nobody to send it to
            count(state.metrics, call.model, "client_left")
            break
        except RouterError:  # no replica could: it ends with the error event
            pass
        if not isinstance(continued, web.StreamResponse):
            count(state.metrics, call.model, "no_replica")
            break
        count(state.metrics, call.model, "continued")
    return await stream.finish()


def count(metrics: RouterMetrics, model: str, outcome: str) -> None:
    metrics.continuations.labels(model, outcome).inc()


def openai_plan(call: Call, body: dict[str, Any]) -> Plan:
    """Continuations of an OpenAI chat or text completion stream."""

    def plan(sent: SentSoFar) -> tuple[Call, Callable[[bytes], bytes]] | None:
        rest = continuation_body(call.path, body, sent)
        if rest is None:
            return None
        return replace(call, body=_json.dumps(rest)), continued_events(call.path, sent)

    return plan
