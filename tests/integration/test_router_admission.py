"""Admission control, balancing policies, metrics and API keys, on real llama.cpp replicas."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
from text_generation import Client

from slurm_llm import Deployment
from slurm_llm.router import RouterConfig, RouterThread
from tests.integration.helpers import get_text, post, wait_until

pytestmark = pytest.mark.llamacpp

# ignore_eos: SmolLM2 often ends a "long story" after a few dozen tokens, which would free
# replicas before the test has filled them.
LONG = {"model": "smollm2", "prompt": "Tell a long story:", "max_tokens": 48, "ignore_eos": True}


def answered(router: RouterThread) -> dict[str, int]:
    return {b.url: b.answered for b in router.pool.backends.values()}


def spent(router: RouterThread, before: dict[str, int]) -> list[int]:
    return sorted(n - before[url] for url, n in answered(router).items())


@pytest.fixture(scope="module")
def tight_router(smollm2_llamacpp: Deployment, slurm_llm_home: Path) -> Iterator[RouterThread]:
    """One request per replica at a time and room for two waiting, to make overload easy."""
    config = RouterConfig(replica_limit=1, max_queue=2)
    with RouterThread(home=slurm_llm_home, deployment="shared-smollm2", config=config) as router:
        yield router


def burst(url: str, requests: int = 8) -> list[tuple[int, str | None]]:
    """Status and Retry-After of ``requests`` long completions sent at once."""

    async def send() -> list[tuple[int, str | None]]:
        async with aiohttp.ClientSession() as session:

            async def one() -> tuple[int, str | None]:
                async with session.post(f"{url}/v1/completions", json=LONG) as reply:
                    await reply.read()
                    return reply.status, reply.headers.get("Retry-After")

            return await asyncio.gather(*(one() for _ in range(requests)))

    return asyncio.run(send())


@pytest.mark.single_process
def test_overload_gets_429_with_retry_after_and_the_rest_are_served(
    tight_router: RouterThread,
) -> None:
    outcomes = burst(tight_router.url)
    statuses = sorted(status for status, _ in outcomes)
    assert statuses == [200] * 4 + [429] * 4, "2 running + 2 queued, the rest turned away"
    assert all(retry and int(retry) >= 1 for status, retry in outcomes if status == 429)


@pytest.mark.single_process
def test_the_load_shows_in_flight_capacity_and_queue(tight_router: RouterThread) -> None:
    story = {**LONG, "max_tokens": 256}

    async def watch() -> list[dict[str, int]]:
        async with aiohttp.ClientSession() as session:
            requests = [
                asyncio.create_task(session.post(f"{tight_router.url}/v1/completions", json=story))
                for _ in range(4)
            ]
            seen = []
            for _ in range(50):  # until all four are in the router, at most 5 s
                async with session.get(f"{tight_router.url}/v1/load") as reply:
                    seen.append((await reply.json())["models"][0])
                if seen[-1]["in_flight"] + seen[-1]["queued"] == 4:
                    break
                await asyncio.sleep(0.1)
            for reply_ in await asyncio.gather(*requests):
                reply_.release()
            return seen

    last = asyncio.run(watch())[-1]
    assert [last["in_flight"], last["capacity"], last["queued"]] == [2, 2, 2]
    assert last["utilisation"] == 2.0
    assert tight_router.load("smollm2").in_flight == 0


@pytest.mark.single_process
def test_a_client_that_leaves_while_its_request_waits_takes_it_out_of_the_queue(
    tight_router: RouterThread,
) -> None:
    """Its place goes to the next request, and no replica computes an answer nobody reads."""
    # long enough (a few seconds on a core) that both replicas stay busy while two clients
    # queue, hang up and leave the queue
    story = {**LONG, "max_tokens": 960}  # within a slot's 1,024-token context
    before = answered(tight_router)
    load_url = f"{tight_router.url}/v1/load"

    async def scenario() -> dict[str, int]:
        async with aiohttp.ClientSession() as session:

            async def until(field: str, value: int) -> dict[str, int]:
                for _ in range(100):  # at most 10 s
                    async with session.get(load_url) as reply:
                        load: dict[str, int] = (await reply.json())["models"][0]
                    if load[field] == value:
                        return load
                    await asyncio.sleep(0.1)
                raise AssertionError(f"{field} never reached {value}: {load}")

            url = f"{tight_router.url}/v1/completions"
            running = [asyncio.create_task(session.post(url, json=story)) for _ in range(2)]
            await until("in_flight", 2)
            leaving = aiohttp.ClientSession()
            waiting = [
                asyncio.create_task(leaving.post(url, json=LONG)),
                asyncio.create_task(leaving.post(url, json={**LONG, "stream": True})),
            ]
            await until("queued", 2)
            for request in waiting:
                request.cancel()
            await leaving.close()  # the two clients hang up
            left = await until("queued", 0)
            for reply in await asyncio.gather(*running):
                await reply.read()
            return left

    left = asyncio.run(scenario())
    assert left["in_flight"] == 2, "they left the queue while both replicas were still busy"
    assert spent(tight_router, before) == [1, 1], "only the two that stayed were sent"
    text = get_text(f"{tight_router.url}/metrics")
    assert re.search(r'endpoint="/v1/completions",model="smollm2",status="499"\} 2', text)


def test_metrics_count_requests_queueing_rejections_and_replicas(
    tight_router: RouterThread,
) -> None:
    assert 429 in [status for status, _ in burst(tight_router.url)]  # a rejection to count
    post(f"{tight_router.url}/v1/completions", {"model": "gpt-9", "prompt": "x"})
    published = [  # what a worker hands to prometheus once a second: its requests' counts,
        # and its queue, which the burst left empty
        r'requests_total\{endpoint="/v1/completions",model="smollm2",status="200"\} [1-9]',
        r'requests_total\{endpoint="/v1/completions",model="unknown",status="404"\}',
        r'slurm_llm_router_queue_wait_seconds_count\{model="smollm2"\}',
        r'slurm_llm_router_tokens_total\{kind="completion",model="smollm2"\}',
        r'slurm_llm_router_queue_depth\{model="smollm2"\} 0\.0',
    ]

    def scraped_all() -> bool:  # with several workers, the others' within a second
        text = get_text(f"{tight_router.url}/metrics")
        return all(re.search(pattern, text) for pattern in published)

    wait_until(scraped_all, 10, "the burst and the invented model's request to be published")
    text = get_text(f"{tight_router.url}/metrics")
    assert 'slurm_llm_router_rejections_total{model="smollm2",reason="queue_full"}' in text
    assert text.count("slurm_llm_router_replica_healthy{") == 2


@pytest.mark.single_process
def test_round_robin_alternates_replicas(
    smollm2_llamacpp: Deployment, slurm_llm_home: Path
) -> None:
    config = RouterConfig(policy="round-robin")
    with RouterThread(home=slurm_llm_home, deployment="shared-smollm2", config=config) as router:
        before = answered(router)
        for _ in range(6):
            post(f"{router.url}/v1/completions", {**LONG, "max_tokens": 1})
        assert spent(router, before) == [3, 3]


@pytest.mark.single_process
def test_a_session_sticks_to_one_replica(router: RouterThread) -> None:
    before = answered(router)
    for _ in range(6):
        post(f"{router.url}/v1/completions", {**LONG, "max_tokens": 1},
             headers={"X-Session-ID": "conversation-7"})  # fmt: skip
    assert spent(router, before) == [0, 6]


@pytest.mark.single_process
def test_prefix_affinity_keeps_a_shared_prompt_on_one_replica(
    smollm2_llamacpp: Deployment, slurm_llm_home: Path
) -> None:
    config = RouterConfig(prefix_affinity_chars=32)
    system = "You are a terse assistant. Answer in one word. "
    with RouterThread(home=slurm_llm_home, deployment="shared-smollm2", config=config) as router:
        before = answered(router)
        for question in ("Sky colour?", "Grass colour?", "Snow colour?", "Coal colour?"):
            post(
                f"{router.url}/v1/completions",
                {**LONG, "prompt": system + question, "max_tokens": 1},
            )
        assert spent(router, before) == [0, 4]


def test_api_keys_are_required_and_checked(
    smollm2_llamacpp: Deployment, slurm_llm_home: Path
) -> None:
    config = RouterConfig(api_keys=frozenset({"s3cret"}))
    with RouterThread(home=slurm_llm_home, deployment="shared-smollm2", config=config) as router:
        status, body, _ = post(f"{router.url}/v1/completions", {**LONG, "max_tokens": 1})
        assert status == 401 and "Authorization: Bearer" in body["error"]["message"]
        wrong = openai.OpenAI(base_url=f"{router.url}/v1", api_key="guess", max_retries=0)
        with wrong, pytest.raises(openai.AuthenticationError, match="not valid"):
            wrong.models.list()
        right = openai.OpenAI(base_url=f"{router.url}/v1", api_key="s3cret", max_retries=0)
        with right:
            assert [m.id for m in right.models.list()] == ["smollm2"]
        tgi = Client(f"{router.url}/models/smollm2", headers={"X-API-Key": "s3cret"}, timeout=60)
        assert tgi.generate("Hi", max_new_tokens=1).generated_text is not None
        assert "ok" in get_text(f"{router.url}/health"), "health checks need no key"
