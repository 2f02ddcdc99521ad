"""Whose fault a 5xx is: a request two replicas refuse is the request's (no replica ejected, the
client told not to retry); a replica that fails what another answers is the replica's.

The upstreams are stand-in OpenAI servers (aiohttp apps named as such): a "picky" one answers
500 to any body holding ``poison``, as llama.cpp does to some malformed bodies, and a "broken"
one answers 500 to everything. The same checks against real llama.cpp replicas are in
``tests/integration/test_router_faults.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack

import openai
import pytest
from aiohttp import web

from slurm_llm._app_thread import AppThread
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread
from tests.integration.helpers import post
from tests.scraping import scraped

GOOD = {"model": "m", "prompt": "Hi", "max_tokens": 2}
POISONED = {**GOOD, "poison": True}


class StandInReplica(AppThread):
    """A stand-in OpenAI server (not an engine); ``broken`` ones answer 500 to everything."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.requests = 0
        app = web.Application()
        app.router.add_post("/v1/completions", self.complete)
        super().__init__(app)

    async def complete(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        if self.broken or b"poison" in body:
            return web.json_response(
                {"error": {"message": "engine failure", "code": 500}}, status=500
            )
        if json.loads(body).get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b'data: {"choices": [{"text": "ok"}]}\n\ndata: [DONE]\n\n')
            return response
        return web.json_response({"choices": [{"index": 0, "text": "ok"}]})


def routed(replicas: list[StandInReplica]) -> tuple[ExitStack, RouterThread]:
    stack = ExitStack()
    for replica in replicas:
        stack.enter_context(replica)
    config = RouterConfig(probes=ProbeConfig(interval_s=0))
    router = RouterThread(static=[("m", r.url) for r in replicas], config=config)
    return stack, stack.enter_context(router)


@pytest.fixture
def two_picky() -> Iterator[tuple[list[StandInReplica], RouterThread]]:
    replicas = [StandInReplica(), StandInReplica()]
    stack, router = routed(replicas)
    with stack:
        yield replicas, router


def faults_counted(router: RouterThread) -> float:
    labels = {"model": "m", "status": "500"}
    return scraped(router.url, "slurm_llm_router_request_faults_total", labels)


def test_a_request_two_replicas_refuse_is_its_own_fault(
    two_picky: tuple[list[StandInReplica], RouterThread],
) -> None:
    replicas, router = two_picky
    status, answer, headers = post(f"{router.url}/v1/completions", POISONED)
    assert status == 500 and answer["error"]["message"] == "engine failure"
    assert headers["X-Should-Retry"] == "false"
    assert [r.requests for r in replicas] == [1, 1]
    assert router.load("m").routable == 2  # nobody ejected
    assert faults_counted(router) == 1
    assert post(f"{router.url}/v1/completions", GOOD).status == 200


def test_the_openai_client_does_not_send_it_again(
    two_picky: tuple[list[StandInReplica], RouterThread],
) -> None:
    replicas, router = two_picky
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=3)
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model="m", prompt="Hi", max_tokens=2, extra_body={"poison": 1})
    client.close()
    assert sum(r.requests for r in replicas) == 2
    assert router.load("m").routable == 2


def test_a_stream_two_replicas_refuse_is_its_own_fault(
    two_picky: tuple[list[StandInReplica], RouterThread],
) -> None:
    _, router = two_picky
    status, _, headers = post(f"{router.url}/v1/completions", {**POISONED, "stream": True})
    assert (status, headers["X-Should-Retry"]) == (500, "false")
    assert router.load("m").routable == 2


@pytest.mark.single_process
def test_a_replica_that_fails_what_another_answers_is_ejected() -> None:
    broken, healthy = StandInReplica(broken=True), StandInReplica()
    stack, router = routed([broken, healthy])
    with stack:
        while broken.requests == 0:  # until the balancer has tried the broken one
            assert post(f"{router.url}/v1/completions", GOOD).status == 200
        assert router.load("m").routable == 1
        assert faults_counted(router) == 0


def test_a_single_replica_is_not_ejected_for_a_request_it_refuses_twice() -> None:
    only = StandInReplica()
    stack, router = routed([only])
    with stack:
        assert post(f"{router.url}/v1/completions", POISONED).status == 500
        assert only.requests == 2
        assert router.load("m").routable == 1
        assert post(f"{router.url}/v1/completions", GOOD).status == 200
