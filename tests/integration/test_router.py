"""The router in front of real llama.cpp replicas, driven by the official OpenAI client."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from slurm_llm import Deployment
from slurm_llm.router import RouterThread
from tests.integration.helpers import (
    deploy_smollm2,
    get_text,
    openai_client,
    post,
    router_process,
    streamed_pieces,
)

pytestmark = pytest.mark.llamacpp


def ask(url: str, content: str = "Say hi.") -> str:
    reply = openai_client(url).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": content}], max_tokens=4
    )
    return reply.choices[0].message.content or ""


def test_models_lists_what_the_replicas_serve(router: RouterThread) -> None:
    assert [m.id for m in openai_client(router.url).models.list()] == ["smollm2"]


def test_chat_and_text_completions_through_the_router(router: RouterThread) -> None:
    assert ask(router.url)
    client = openai_client(router.url)
    assert client.completions.create(model="smollm2", prompt="1, 2,", max_tokens=3).choices[0].text


def test_streaming_passes_through_token_by_token(router: RouterThread) -> None:
    assert len(streamed_pieces(router.url, "smollm2")) > 3


def test_the_async_client_works_too(router: RouterThread) -> None:
    async def many() -> int:
        client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
        requests = [
            client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
            for _ in range(6)
        ]
        replies = await asyncio.gather(*requests)
        await client.close()
        return len([r for r in replies if r.choices])

    assert asyncio.run(many()) == 6


@pytest.mark.single_process
def test_load_is_spread_over_the_replicas(router: RouterThread) -> None:
    before = {b.url: b.answered for b in router.pool.backends.values()}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: ask(router.url), range(16)))
    after = {b.url: b.answered - before.get(b.url, 0) for b in router.pool.backends.values()}
    assert len(after) == 2 and min(after.values()) >= 3, after


def test_unknown_model_is_404_listing_the_served_ones(router: RouterThread) -> None:
    hi = {"model": "gpt-9", "messages": [{"role": "user", "content": "Hi"}]}
    status, body, _ = post(f"{router.url}/v1/chat/completions", hi)
    assert status == 404
    assert "'gpt-9' is not served here; available: smollm2" in str(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"messages": [{"role": "user", "content": "Hi"}]}', "the field 'model' is required"),
        (b'{"model": "smollm2"}', "the field 'messages' is required"),
    ],
)
def test_malformed_requests_get_400_naming_the_problem(
    router: RouterThread, body: bytes, message: str
) -> None:
    status, reply, _ = post(f"{router.url}/v1/chat/completions", body)
    assert status == 400
    assert message in str(reply) and "Traceback" not in str(reply)


def test_oversized_bodies_get_413(router: RouterThread) -> None:
    huge = b'{"model": "smollm2", "prompt": "' + b"x" * 100_000 + b'"}'
    status, reply, _ = post(f"{router.url}/v1/completions", huge)
    assert status == 413 and "larger than 65536 bytes" in str(reply)


def test_killing_a_replica_under_load_fails_no_request(slurm_llm_home: Path) -> None:
    with (
        deploy_smollm2("under-fire", replicas=2, max_restarts=5) as deployment,
        RouterThread(home=slurm_llm_home, deployment="under-fire") as router,
    ):
        victim = deployment.records()[0]
        results: list[str | Exception] = []
        lock = threading.Lock()

        def one(index: int) -> None:
            try:
                answer = ask(router.url, f"Count to {index}.")
            except Exception as exc:  # every failure is collected and reported
                answer = exc  # type: ignore[assignment]
            with lock:
                results.append(answer)

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(one, i) for i in range(60)]
            while len(results) < 10:
                threading.Event().wait(0.05)
            os.kill(victim.engine_pid, signal.SIGKILL)
            for future in futures:
                future.result()
        failures = [r for r in results if isinstance(r, Exception)]
        assert failures == [] and len(results) == 60


def test_the_cli_serves_the_router(smollm2_llamacpp: Deployment) -> None:
    with router_process("--deployment", "shared-smollm2") as (_, url):
        assert json.loads(get_text(f"{url}/ready"))["models"] == ["smollm2"]
        assert ask(url)
