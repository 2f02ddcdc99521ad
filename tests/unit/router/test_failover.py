"""Mid-stream failover: a stream whose replica breaks off continues on another replica, and the
client sees one stream: the text it had, then the rest, one id, usage as if nothing happened.

The replicas are stand-in OpenAI servers (aiohttp apps named as such, not engines) that "count":
asked to complete ``count:`` they answer `` 1 2 3 ...``, one number per event, and asked to
continue ``count: 1 2 3`` (a prompt, or a final assistant message with
``continue_final_message``) they go on from 4, as an engine continues a text. Each breaks off
its first stream after three events, as a killed engine's stream would. The same behaviour with
real llama.cpp replicas killed mid-stream is in ``tests/integration/test_router_faults.py``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web

from slurm_llm._app_thread import AppThread
from slurm_llm._paths import registry_dir
from slurm_llm._registry import Registry
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread
from slurm_llm.router._failover import (
    SentSoFar,
    continuation_body,
    continued_events,
    sent_so_far,
)
from tests.scraping import scraped
from tests.unit.test_registry import record

BREAK_AFTER = 3
ENGINE_ERROR = "EngineCore encountered an issue"


class CountingReplica(AppThread):
    """A stand-in OpenAI server that counts; ``breaks`` streams break off after 3 events, and
    while ``silences[0]`` (``engine_errors[0]``) > 0, a stream of any replica falls silent
    (sends an error event) there instead."""

    silences: ClassVar[list[int]] = [0]
    engine_errors: ClassVar[list[int]] = [0]  # streams to end with an error event and [DONE]

    def __init__(self, breaks: int = 1, ends: int = 0) -> None:
        self.breaks = breaks
        self.ends = ends  # streams that end cleanly after 3 events, without [DONE]
        self.bodies: list[dict[str, Any]] = []
        app = web.Application()
        app.router.add_post("/v1/completions", self.complete)
        app.router.add_post("/v1/chat/completions", self.complete)
        super().__init__(app)

    async def complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        chat = "messages" in body
        if chat:
            last = body["messages"][-1]
            so_far = last["content"] if body.get("continue_final_message") else ""
            prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
        else:  # token ids count as "count:"
            prompt = body["prompt"] if isinstance(body["prompt"], str) else "count:"
            so_far = prompt.removeprefix("count:")
            prompt_tokens = len(prompt.split())
        start = len(so_far.split()) + 1
        numbers = range(start, start + body.get("max_tokens", 5))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        meta = {"id": f"cmpl-{id(body)}", "created": len(self.bodies), "model": "m"}
        if chat:
            await send(
                response, {**meta, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
            )
        for sent, number in enumerate(numbers):
            if self.silences[0] and sent == BREAK_AFTER:
                self.silences[0] -= 1
                while request.transport and not request.transport.is_closing():
                    await asyncio.sleep(0.05)  # an engine that neither answers nor closes
                return response
            if self.ends and sent == BREAK_AFTER:
                self.ends -= 1
                return response  # a clean end of the HTTP answer, and no [DONE]
            if self.engine_errors[0] and sent == BREAK_AFTER:  # as vLLM's when its core dies
                self.engine_errors[0] -= 1
                await send(response, {"error": {"message": ENGINE_ERROR, "code": 500}})
                await response.write(b"data: [DONE]\n\n")
                return response
            if self.breaks and sent == BREAK_AFTER:
                self.breaks -= 1
                assert request.transport is not None
                request.transport.close()  # mid-stream, as a killed engine's stream ends
                return response
            piece = {"delta": {"content": f" {number}"}} if chat else {"text": f" {number}"}
            last_one = number == numbers[-1]
            choice = {"index": 0, **piece, "finish_reason": "length" if last_one else None}
            await send(response, {**meta, "choices": [choice]})
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(numbers),
                     "total_tokens": prompt_tokens + len(numbers)}  # fmt: skip
            await send(response, {**meta, "choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        return response


async def send(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")


@contextmanager
def routed(pair: list[CountingReplica], **config: Any) -> Iterator[RouterThread]:
    """A router in front of the stand-in replicas (named as one static model, ``m``)."""
    with ExitStack() as stack:
        for replica in pair:
            stack.enter_context(replica)
        settings = RouterConfig(probes=ProbeConfig(interval_s=0), **config)
        yield stack.enter_context(
            RouterThread(static=[("m", r.url) for r in pair], config=settings)
        )


@pytest.fixture
def replicas() -> Iterator[tuple[list[CountingReplica], RouterThread]]:
    pair = [CountingReplica(), CountingReplica()]
    with routed(pair) as router:
        yield pair, router


def stream(router: RouterThread, path: str, body: dict[str, Any],
           headers: dict[str, str] | None = None) -> list[bytes]:  # fmt: skip
    """The raw ``data:`` payloads of one streamed request, in order."""
    request = urllib.request.Request(
        f"{router.url}{path}", data=json.dumps({**body, "stream": True}).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return [line[5:].strip() for line in response if line.startswith(b"data:")]


def decoded(payloads: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(p) for p in payloads if p != b"[DONE]"]


def continued(router: RouterThread, outcome: str = "continued") -> float:
    labels = {"model": "m", "outcome": outcome}
    return scraped(router.url, "slurm_llm_router_stream_continuations_total", labels)


def test_a_broken_text_stream_continues_on_the_other_replica(
    replicas: tuple[list[CountingReplica], RouterThread],
) -> None:
    pair, router = replicas
    body = {"model": "m", "prompt": "count:", "max_tokens": 8,
            "stream_options": {"include_usage": True}}  # fmt: skip
    payloads = stream(router, "/v1/completions", body)
    events = decoded(payloads)
    text = "".join(c["text"] for e in events for c in e["choices"])
    assert text == " 1 2 3 4 5 6 7 8"
    assert payloads[-1] == b"[DONE]" and payloads.count(b"[DONE]") == 1
    assert len({e["id"] for e in events}) == 1 and len({e["created"] for e in events}) == 1
    assert events[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 8, "total_tokens": 9}
    # each replica breaks its first stream: 1-3 from one, 4-6 from the other, 7-8 from the first
    continuations = sorted(
        (b["prompt"], b["max_tokens"]) for r in pair for b in r.bodies if b["prompt"] != "count:"
    )
    assert continuations == [("count: 1 2 3", 5), ("count: 1 2 3 4 5 6", 2)]
    assert continued(router) == 2


def test_a_broken_chat_stream_continues_the_partial_answer(
    replicas: tuple[list[CountingReplica], RouterThread],
) -> None:
    pair, router = replicas
    body = {"model": "m", "messages": [{"role": "user", "content": "count"}], "max_tokens": 6}
    events = decoded(stream(router, "/v1/chat/completions", body))
    deltas = [c["delta"] for e in events for c in e["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == " 1 2 3 4 5 6"
    assert sum("role" in d for d in deltas) == 1  # the continuation's opening is dropped
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    [continuation] = [b for r in pair for b in r.bodies if b.get("continue_final_message")]
    assert continuation["messages"][-1] == {"role": "assistant", "content": " 1 2 3"}
    assert continuation["add_generation_prompt"] is False and continuation["max_tokens"] == 3


def test_a_translated_tgi_stream_continues_with_its_token_index_and_full_text(
    replicas: tuple[list[CountingReplica], RouterThread],
) -> None:
    _, router = replicas
    body = {"inputs": "count:", "parameters": {"max_new_tokens": 7}}
    events = decoded(stream(router, "/generate_stream", body))
    assert [e["index"] for e in events] == list(range(1, 8))
    assert events[-1]["generated_text"] == " 1 2 3 4 5 6 7"
    assert events[-1]["details"]["generated_tokens"] == 7


def test_failover_can_be_turned_off_per_request(
    replicas: tuple[list[CountingReplica], RouterThread],
) -> None:
    _, router = replicas
    body = {"model": "m", "prompt": "count:", "max_tokens": 8}
    payloads = stream(router, "/v1/completions", body, {"X-Stream-Failover": "off"})
    assert b"broke off the stream" in payloads[-2] and payloads[-1] == b"[DONE]"
    assert continued(router) == 0


@pytest.mark.parametrize(
    "extra",
    [{"n": 2}, {"prompt": [[1, 2, 3]]}, {"echo": True}],
    ids=["several choices", "token ids", "echo"],
)
def test_a_stream_that_cannot_mean_the_same_when_continued_ends_with_the_error(
    replicas: tuple[list[CountingReplica], RouterThread], extra: dict[str, Any]
) -> None:
    _, router = replicas
    body = {"model": "m", "prompt": "count:", "max_tokens": 8, **extra}
    payloads = stream(router, "/v1/completions", body)
    assert b"broke off the stream" in payloads[-2]
    assert continued(router, "not_continuable") == 1


def test_with_every_replica_breaking_the_stream_ends_with_the_error() -> None:
    pair = [CountingReplica(breaks=10), CountingReplica(breaks=10)]
    with routed(pair, retry_backoff_s=0.01) as router:
        body = {"model": "m", "prompt": "count:", "max_tokens": 40}
        events = stream(router, "/v1/completions", body)
        text = "".join(c["text"] for e in decoded(events[:-2]) for c in e["choices"])
        assert text == " " + " ".join(str(n) for n in range(1, 13))  # 3 events from each of 4
        assert b"broke off the stream" in events[-2]
        assert continued(router) == 3


def test_a_replica_that_leaves_the_registry_mid_stream_is_cut_off_and_the_stream_goes_on(
    tmp_path: Path,
) -> None:
    """Its launcher was killed, or its job cancelled, while its engine still holds the
    connection in silence: the stream continues elsewhere as soon as the record goes, not
    after the idle timeout."""
    CountingReplica.silences[0] = 1
    pair = [CountingReplica(breaks=0), CountingReplica(breaks=0)]
    registry = Registry(registry_dir(tmp_path))
    config = RouterConfig(probes=ProbeConfig(interval_s=0), idle_stream_timeout_s=100)
    with ExitStack() as stack:
        for index, replica in enumerate(pair):
            stack.enter_context(replica)
            registry.publish(record(deployment="d", replica=index, model="m", url=replica.url,
                                    job_id=f"1_{index}"))  # fmt: skip
        router = stack.enter_context(RouterThread(home=tmp_path, deployment="d", config=config))
        while router.load("m").replicas < 2:
            time.sleep(0.05)
        body = {"model": "m", "prompt": "count:", "max_tokens": 8}
        result: list[list[bytes]] = []
        reader = threading.Thread(
            target=lambda: result.append(stream(router, "/v1/completions", body))
        )
        reader.start()
        while not any(r.bodies for r in pair):  # the stream has begun on one of them
            time.sleep(0.02)
        [serving] = [i for i, r in enumerate(pair) if r.bodies]
        while CountingReplica.silences[0]:  # it has fallen silent
            time.sleep(0.02)
        silenced = time.monotonic()
        registry.withdraw("d", serving, f"1_{serving}")
        reader.join(60)
        assert time.monotonic() - silenced < 20  # well before the 100 s idle timeout
        assert continued(router) == 1
    events = decoded(result[0])
    assert "".join(c["text"] for e in events for c in e["choices"]) == " 1 2 3 4 5 6 7 8"


def test_a_stream_that_ends_without_done_is_continued() -> None:
    """An OpenAI stream is whole only at its [DONE]: an engine shutting down that closes the
    answer cleanly mid-way has cut it short."""
    pair = [CountingReplica(breaks=0, ends=1), CountingReplica(breaks=0, ends=1)]
    with routed(pair) as router:
        body = {"model": "m", "prompt": "count:", "max_tokens": 5}
        payloads = stream(router, "/v1/completions", body)
    text = "".join(c["text"] for e in decoded(payloads) for c in e["choices"])
    assert text == " 1 2 3 4 5" and payloads[-1] == b"[DONE]"


def test_a_stream_an_engine_ends_with_an_error_event_continues_and_nobody_is_ejected() -> None:
    CountingReplica.engine_errors[0] = 1
    pair = [CountingReplica(breaks=0), CountingReplica(breaks=0)]
    with routed(pair) as router:
        body = {"model": "m", "prompt": "count:", "max_tokens": 8}
        payloads = stream(router, "/v1/completions", body)
        assert router.load("m").routable == 2
        assert continued(router) == 1
    text = "".join(c["text"] for e in decoded(payloads) for c in e["choices"])
    assert text == " 1 2 3 4 5 6 7 8" and payloads[-1] == b"[DONE]"
    assert [len(r.bodies) for r in pair] == [1, 1]  # the continuation went to the other one


def test_a_stream_two_engines_end_with_errors_gets_the_engine_s_error_and_nobody_is_ejected() -> (
    None
):
    CountingReplica.engine_errors[0] = 2
    with routed([CountingReplica(breaks=0), CountingReplica(breaks=0)]) as router:
        body = {"model": "m", "messages": [{"role": "user", "content": "count:"}], "max_tokens": 9}
        payloads = stream(router, "/v1/chat/completions", body)
        assert router.load("m").routable == 2
        assert continued(router) == 1 and continued(router, "request_fault") == 1
    *answer, error = decoded(payloads)
    text = "".join(c["delta"].get("content", "") for e in answer for c in e["choices"])
    assert text == " 1 2 3 4 5 6" and error["error"]["message"] == ENGINE_ERROR
    assert payloads[-1] == b"[DONE]"


SENT = SentSoFar(" 1 2", 2, "cmpl-1", 7, finished=False, continuable=True)
ASK: dict[str, Any] = {"role": "user", "content": "count"}
CHAT_BODY: dict[str, Any] = {"model": "m", "messages": [ASK], "max_tokens": 9}


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def test_a_continuation_extends_a_prefill_of_the_client_s_own() -> None:
    body = {**CHAT_BODY, "messages": [ASK, {"role": "assistant", "content": "0"}]}
    rest = continuation_body("/v1/chat/completions", body, SENT)
    assert rest is not None and rest["messages"][-1] == {"role": "assistant", "content": "0 1 2"}
    assert len(rest["messages"]) == 2 and rest["max_tokens"] == 7


def test_output_held_to_a_grammar_is_not_continued_and_nothing_sent_is_asked_again() -> None:
    for constrained in ({"response_format": {"type": "json_object"}}, {"grammar": "root ::= x"}):
        assert continuation_body("/v1/chat/completions", {**CHAT_BODY, **constrained}, SENT) is None
    nothing = SentSoFar("", 0, None, None, finished=False, continuable=True)
    assert continuation_body("/v1/chat/completions", CHAT_BODY, nothing) == CHAT_BODY
    assert continuation_body("/v1/chat/completions", {**CHAT_BODY, "n": None}, SENT) is not None


def test_a_continuation_passes_error_events_on_and_drops_only_its_opening() -> None:
    rewrite = continued_events("/v1/chat/completions", SENT)
    opening = {"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    out = rewrite(event(opening) + event({"error": {"message": "engine failed"}}))
    assert b"engine failed" in out and b"assistant" not in out


def test_reasoning_sent_makes_a_stream_not_continuable() -> None:
    thinking = {"id": "x", "choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]}
    assert not sent_so_far([event(thinking)]).continuable
