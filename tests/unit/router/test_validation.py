"""A malformed request is answered 400 by the router, naming the field, and never reaches a
replica; a well-formed one reaches it as the client's own bytes, unknown fields included.

The upstream is a stand-in OpenAI server (an aiohttp app named as such) that records what it
was sent; the same checks against real llama.cpp replicas are in
``tests/integration/test_router_faults.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from unittest.mock import Mock

import openai
import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from slurm_llm._app_thread import AppThread
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread
from slurm_llm.router._errors import RouterError
from slurm_llm.router._requests import parsed_concern, parsed_json, too_deep, whole_body
from tests.integration.helpers import post

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
COMPLETION = {"model": "m", "prompt": "Hi", "max_tokens": 2}
GENERATE = {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}


class RecordingUpstream(AppThread):
    """A stand-in OpenAI server (not an engine) that keeps every body it was sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.answer)
        app.router.add_post("/v1/completions", self.answer)
        super().__init__(app)

    async def answer(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "text": "ok",
                  "finish_reason": "stop"}  # fmt: skip
        return web.json_response({"id": "x", "object": "chat.completion", "created": 0,
                                  "model": "m", "choices": [choice]})  # fmt: skip


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def router(upstream: RecordingUpstream) -> Iterator[RouterThread]:
    config = RouterConfig(probes=ProbeConfig(interval_s=0))
    with RouterThread(static=[("m", upstream.url)], config=config) as running:
        yield running


def with_field(base: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """``base`` with the field at ``path`` (``messages.0.role``) set to ``value``."""
    body: dict[str, Any] = json.loads(json.dumps(base))
    *parents, last = path.split(".")
    target: Any = body
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return body


# (path, body, field set, value, the field the error must name)
MALFORMED = [
    ("/v1/chat/completions", CHAT, "messages.0.role", {}, "messages[0].role"),
    ("/v1/chat/completions", CHAT, "messages.0.role", "wizard", "messages[0].role"),
    ("/v1/chat/completions", CHAT, "messages.0.content", 5, "messages[0].content"),
    ("/v1/chat/completions", CHAT, "messages.0.content", [{"type": "text", "text": 1}],
     "messages[0].content[0].text"),
    ("/v1/chat/completions", CHAT, "messages.0.content", None, "messages[0]"),
    ("/v1/chat/completions", CHAT, "messages", [], "messages"),
    ("/v1/chat/completions", CHAT, "messages", "Hi", "messages"),
    ("/v1/chat/completions", CHAT, "model", 7, "model"),
    ("/v1/chat/completions", CHAT, "stream", "yes", "stream"),
    ("/v1/chat/completions", CHAT, "n", 0, "n"),
    ("/v1/chat/completions", CHAT, "max_tokens", "5", "max_tokens"),
    ("/v1/chat/completions", CHAT, "max_tokens", -1, "max_tokens"),
    ("/v1/chat/completions", CHAT, "max_tokens", 2**40, "max_tokens"),
    ("/v1/chat/completions", CHAT, "temperature", "hot", "temperature"),
    ("/v1/chat/completions", CHAT, "temperature", 9.5, "temperature"),
    ("/v1/chat/completions", CHAT, "stop", [1], "stop[0]"),
    ("/v1/chat/completions", CHAT, "tools", [{"type": "function"}], "tools[0]"),
    ("/v1/chat/completions", CHAT, "tools", [{"type": "function", "function": {}}],
     "tools[0].function.name"),
    ("/v1/chat/completions", CHAT, "tool_choice", "sometimes", "tool_choice"),
    ("/v1/chat/completions", CHAT, "stream_options", {"include_usage": 1},
     "stream_options.include_usage"),
    ("/v1/chat/completions", CHAT, "tribunal", {"max_rounds": []}, "tribunal.max_rounds"),
    ("/v1/completions", COMPLETION, "prompt", {}, "prompt"),
    ("/v1/completions", COMPLETION, "prompt", [-1], "prompt[0]"),
    ("/v1/completions", COMPLETION, "prompt", [], "prompt"),
    ("/v1/completions", COMPLETION, "prompt", "", "prompt"),
    ("/v1/completions", COMPLETION, "prompt", ["0", ""], "prompt[1]"),
    ("/generate", GENERATE, "inputs", "", "inputs"),
    ("/v1/completions", COMPLETION, "echo", 1, "echo"),
    ("/generate", GENERATE, "inputs", ["Hi"], "inputs"),
    ("/generate", GENERATE, "parameters", [1], "parameters"),
    ("/generate", GENERATE, "parameters.max_new_tokens", 0, "parameters.max_new_tokens"),
    ("/generate", GENERATE, "parameters.top_p", 1.0, "parameters.top_p"),
    ("/generate", GENERATE, "parameters.stop", "\n", "parameters.stop"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "base", "field", "value", "named"), MALFORMED)
def test_a_malformed_field_is_a_400_naming_it_and_reaches_no_replica(
    router: RouterThread, upstream: RecordingUpstream,
    path: str, base: dict[str, Any], field: str, value: object, named: str,
) -> None:  # fmt: skip
    before = len(upstream.bodies)
    status, answer, _ = post(router.url + path, with_field(base, field, value))
    assert status == 400, answer
    if path == "/generate":
        assert answer["error_type"] == "validation" and f"'{named}'" in answer["error"]
    else:
        assert answer["error"]["param"] == named, answer
        assert f"'{named}'" in answer["error"]["message"]
    assert len(upstream.bodies) == before


def test_the_router_own_apis_are_checked_too(router: RouterThread) -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/tribunal", {"model": "m", "prompt": "x", "max_rounds": "3"}, "max_rounds"),
        ("/v1/tribunal", {"model": "m", "prompt": "x", "rounds": 3}, "rounds"),
        ("/v1/map_reduce", {"model": "m", "instruction": "x", "text": ""}, "text"),
        ("/v1/batch", {"model": "m", "requests": []}, "requests"),
        ("/v1/batch", {"model": "m", "endpoint": "/v1/embeddings", "requests": [{}]}, "endpoint"),
    ]
    for path, body, named in cases:
        status, answer, _ = post(router.url + path, body)
        assert (status, answer["error"]["param"]) == (400, named), (path, answer)


def test_a_malformed_batch_item_fails_alone(router: RouterThread) -> None:
    items = [{"messages": [{"role": "user", "content": "Hi"}]}, {"messages": [{"role": 1}]}]
    status, answer, _ = post(router.url + "/v1/batch", {"model": "m", "requests": items})
    assert status == 200 and answer["succeeded"] == 1
    assert answer["results"][1]["status"] == 400
    assert answer["results"][1]["error"]["param"] == "messages[0].role"


def test_unknown_fields_pass_through_as_the_client_sent_them(
    router: RouterThread, upstream: RecordingUpstream
) -> None:
    raw = b'{"model":"m", "prompt":"Hi",   "max_tokens":2, "mirostat": 2, "cache_prompt": true}'
    assert post(router.url + "/v1/completions", raw).status == 200
    assert upstream.bodies[-1] == raw


def test_deep_nesting_is_refused_before_parsing(router: RouterThread) -> None:
    deep = b'{"model": "m", "prompt": "x", "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    status, answer, _ = post(router.url + "/v1/completions", deep)
    assert status == 400 and "deeper than" in answer["error"]["message"]
    assert too_deep(deep) and not too_deep(b"[" * 64 + b"]" * 64)
    within_orjson = b'{"model": "m", "prompt": "x", "extra": ' + b"[" * 100 + b"]" * 100 + b"}"
    status, answer, _ = post(router.url + "/v1/completions", within_orjson)  # orjson's path
    assert status == 400 and "deeper than" in answer["error"]["message"]
    brackets_in_text = {"model": "m", "prompt": "[" * 5000}
    assert not too_deep(json.dumps(brackets_in_text).encode())
    utf16 = json.dumps({"model": "m", "prompt": "\u2200", "x": [[[]]]}).encode("utf-16")
    status, answer, _ = post(router.url + "/v1/completions", utf16)
    assert status == 400 and "not UTF-8" in answer["error"]["message"]


def depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


JSON = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}"\\ab'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("[{a"), inner, max_size=3),
    max_leaves=30,
)


@given(JSON, st.integers(min_value=0, max_value=6))
def test_the_depth_scan_agrees_with_the_parsed_depth(value: object, limit: int) -> None:
    """Brackets inside strings (escaped quotes too) never count, whichever path answers: the
    count of all openings, the count without strings, or the full scan; the walk over the
    parsed value (orjson's path) agrees."""
    assert too_deep(json.dumps(value).encode(), limit) == (depth(value) > limit)
    assert (parsed_concern(value, limit) == "too deep") == (depth(value) > limit)


@given(JSON, st.integers(-(2**70), 2**70) | st.sampled_from([-(2**63) - 1, -(2**63), 2**64]))
def test_every_integer_is_read_as_the_integer_it_is(value: object, integer: int) -> None:
    """orjson reads an integer beyond 64 bits as a float: a body where it did is read by the
    standard library instead, exactly."""
    raw = json.dumps({"seed": integer, "other": value}).encode()
    _, body = parsed_json(raw)
    assert type(body["seed"]) is int and body["seed"] == integer
    assert body == json.loads(raw)


def test_an_integer_longer_than_python_reads_is_a_400_not_a_router_failure() -> None:
    with pytest.raises(RouterError) as refused:
        parsed_json(b'{"model": "m", "seed": ' + b"7" * 5000 + b"}")
    assert refused.value.status == 400 and "Exceeds the limit" in refused.value.message


@pytest.mark.parametrize("arrived", ["whole", "in pieces"])
def test_a_body_is_read_alike_whether_it_arrived_whole_or_in_pieces(arrived: str) -> None:
    """``whole_body`` takes a body that has arrived from aiohttp's buffer and leaves one still
    arriving to ``request.read``: the same bytes, and the same 413 past the size limit."""
    body = json.dumps(CHAT).encode()

    async def read(limit: int) -> bytes:
        loop = asyncio.get_running_loop()
        protocol = BaseProtocol(loop)
        protocol.connection_made(Mock())  # a fake socket: the bytes are fed below
        payload = StreamReader(protocol, 2**16, loop=loop)
        request = make_mocked_request("POST", "/v1/chat/completions", payload=payload,
                                      client_max_size=limit)  # fmt: skip
        payload.feed_data(body[:10])

        def rest() -> None:
            payload.feed_data(body[10:])
            payload.feed_eof()

        if arrived == "whole":
            rest()
        else:
            loop.call_soon(rest)  # once whole_body waits for it
        return await whole_body(request)

    assert asyncio.run(read(len(body))) == body
    assert asyncio.run(read(0)) == body  # no limit, as aiohttp reads 0
    with pytest.raises(web.HTTPRequestEntityTooLarge):
        asyncio.run(read(len(body) - 1))


def test_nan_and_infinity_are_not_json(router: RouterThread) -> None:
    body = b'{"model": "m", "prompt": "x", "top_p": NaN}'
    status, answer, _ = post(router.url + "/v1/completions", body)
    assert status == 400 and "NaN" in answer["error"]["message"]
    body = b'{"model": "m", "prompt": "x", "top_p": 1e999}'
    status, answer, _ = post(router.url + "/v1/completions", body)
    assert status == 400 and "1e999" in answer["error"]["message"]


def test_the_openai_client_gets_a_bad_request_error(router: RouterThread) -> None:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=3)
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\]\.role"):
        client.chat.completions.create(
            model="m",
            messages=[{"role": {}, "content": ""}],  # type: ignore[misc,list-item]
            max_tokens=2,
        )
    client.close()


def test_what_the_apis_allow_passes(router: RouterThread) -> None:
    """Content parts other than text (images, vLLM's video), custom tools, a named tool
    choice, vLLM's own response formats: the router passes them on for the engine to judge."""
    video = {"type": "video_url", "video_url": {"url": "file:///v.mp4"}}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    body = {
        **CHAT,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, image, video]}],
        "tools": [{"type": "custom", "custom": {"name": "grep"}}],
        "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto"}},
        "response_format": {"type": "structural_tag", "structures": []},
    }
    assert post(router.url + "/v1/chat/completions", body).status == 200
