"""What a keyed request is charged: a request the router runs itself (a tribunal, a chat
completion that asks for one, a map-reduce) is charged every call it made, to the caller's
limits and in its usage record, as plain requests are charged their one call.

The replica is a stand-in OpenAI server (an aiohttp app, not an engine) that answers every chat
completion with the same usage, so what a request should cost is its calls times that. Plain
requests' usage against a real engine is checked in ``tests/integration/test_router_keys.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from slurm_llm._api_keys import KeysFile
from slurm_llm._app_thread import AppThread
from slurm_llm._usage import UsageRecord, read_usage
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread
from slurm_llm.router._limits import estimated_tokens
from tests.integration.helpers import post, wait_until
from tests.unit.router.test_fault_attribution import StandInReplica

PROMPT_TOKENS, COMPLETION_TOKENS = 11, 5
TOKENS_PER_MINUTE = 100_000
ONE_LAW = {"laws": "academic", "only": ["formal-language"], "max_rounds": 1}
SUMMARY = {"model": "m", "instruction": "Summarise.", "text": "word " * 300, "context": 256,
           "max_tokens": 16, "overlap": 8}  # fmt: skip


class StandInChatReplica(AppThread):
    """A stand-in OpenAI server (not an engine): every chat completion answers the same short
    text with the same usage; ``/tokenize`` and ``/detokenize`` map characters to tokens."""

    def __init__(self) -> None:
        self.completions = 0
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.complete)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/detokenize", self.detokenize)
        super().__init__(app)

    async def complete(self, request: web.Request) -> web.Response:
        self.completions += 1
        return web.json_response({
            "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "PASS: well put."}}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                      "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
        })  # fmt: skip

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        text = body.get("prompt", body.get("content"))  # vLLM's name, llama.cpp's
        return web.json_response({"tokens": [ord(c) for c in text]})

    async def detokenize(self, request: web.Request) -> web.Response:
        text = "".join(chr(token) for token in (await request.json())["tokens"])
        return web.json_response({"prompt": text, "content": text})


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[StandInChatReplica, RouterThread, str, Path]]:
    """A router with a keys file in front of the stand-in; a key with a minute's token limit;
    the folder of usage records."""
    keys = KeysFile(tmp_path / "keys.toml")
    key = keys.add("alice", tokens_per_minute=TOKENS_PER_MINUTE)
    usage = tmp_path / "usage"
    config = RouterConfig(probes=ProbeConfig(interval_s=0), keys_file=keys.path, usage_dir=usage)
    with (
        StandInChatReplica() as replica,
        RouterThread(static=[("m", replica.url)], config=config) as router,
    ):
        yield replica, router, key, usage


def charged_once(usage: Path) -> UsageRecord:
    """The one usage record alice's request left, once it is written."""
    records: list[UsageRecord] = []

    def written() -> bool:
        records[:] = [r for r in read_usage(usage) if r.key == "alice"]
        return bool(records)

    wait_until(written, what="the request's usage record")
    [record] = records
    return record


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/tribunal", {"model": "m", "prompt": "Why is the sky blue?", **ONE_LAW}),
        (
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [{"role": "user", "content": "Why is the sky blue?"}],
                "tribunal": ONE_LAW,
            },
        ),
        ("/v1/map_reduce", SUMMARY),
        ("/v1/map_reduce", {**SUMMARY, "tribunal": ONE_LAW}),
    ],
    ids=["tribunal", "chat with a tribunal", "map-reduce", "map-reduce with a tribunal"],
)
def test_every_call_a_request_makes_is_charged_to_the_caller_s_key(
    keyed: tuple[StandInChatReplica, RouterThread, str, Path], path: str, body: dict[str, Any]
) -> None:
    replica, router, key, usage = keyed
    answer = post(f"{router.url}{path}", body, {"X-API-Key": key})
    assert answer.status == 200, answer.body
    calls = replica.completions
    assert calls >= 2  # a draft and a critique at least; a map and a reduce at least
    record = charged_once(usage)
    assert (record.prompt_tokens, record.completion_tokens) == (
        calls * PROMPT_TOKENS, calls * COMPLETION_TOKENS
    )  # fmt: skip
    assert record.status == 200 and record.replica == replica.url and record.endpoint == path
    used = calls * (PROMPT_TOKENS + COMPLETION_TOKENS)
    assert int(answer.headers["x-ratelimit-remaining-tokens"]) == TOKENS_PER_MINUTE - used


def test_an_answer_without_usage_is_settled_at_its_estimate_not_at_nothing(
    tmp_path: Path,
) -> None:
    keys = KeysFile(tmp_path / "keys.toml")
    key = keys.add("alice", tokens_per_minute=TOKENS_PER_MINUTE)
    config = RouterConfig(probes=ProbeConfig(interval_s=0), keys_file=keys.path)
    ask = {"model": "m", "prompt": "Hi", "max_tokens": 2}
    with (
        StandInReplica() as replica,  # its answers say no usage
        RouterThread(static=[("m", replica.url)], config=config, home=tmp_path) as router,
    ):
        answer = post(f"{router.url}/v1/completions", ask, {"X-API-Key": key})
    assert answer.status == 200
    estimate = estimated_tokens(len(json.dumps(ask)), ask)
    assert int(answer.headers["x-ratelimit-remaining-tokens"]) == TOKENS_PER_MINUTE - estimate
    record = charged_once(tmp_path / "usage")  # what another worker or a restart will count
    assert (record.tokens, record.estimated_tokens) == (0, estimate)
