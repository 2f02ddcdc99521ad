"""Whose fault it is, and what a client sees, in front of real llama.cpp replicas: a malformed
request is a 400 that ejects nobody; a request every engine fails is passed on as not worth
retrying; a stream whose replica is killed mid-answer continues on the other replica."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from slurm_llm import Deployment
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread
from tests.integration.helpers import (
    COUNTING_STREAMS,
    deploy_smollm2,
    post,
    read_killed_stream,
    read_stream,
    wait_until,
)
from tests.scraping import scraped

pytestmark = pytest.mark.llamacpp

MODEL = "smollm2"


@pytest.fixture(scope="module")
def router(smollm2_llamacpp: Deployment, slurm_llm_home: Path) -> Iterator[RouterThread]:
    """A router of its own in front of the shared replicas, so its metrics are this module's."""
    config = RouterConfig(probes=ProbeConfig(interval_s=0))
    with RouterThread(home=slurm_llm_home, deployment="shared-smollm2", config=config) as running:
        wait_until(lambda: running.load(MODEL).routable == 2, 60, "both replicas routable")
        yield running


def sample(router: RouterThread, name: str, labels: dict[str, str]) -> float:
    return scraped(router.url, name, labels)


@pytest.mark.single_process
def test_the_malformed_request_that_once_ejected_every_replica_is_a_400(
    router: RouterThread,
) -> None:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=3)
    for _ in range(5):
        with pytest.raises(openai.BadRequestError, match=r"messages\[0\]\.role"):
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": {}, "content": ""}],  # type: ignore[misc,list-item]
                max_tokens=2,
            )
    client.close()
    assert router.load(MODEL).routable == 2
    assert [b.failures for b in router.pool.of(MODEL)] == [0, 0]


@pytest.mark.single_process
def test_a_request_every_engine_fails_is_passed_on_not_retried_and_ejects_nobody(
    router: RouterThread,
) -> None:
    """An image sent to a text-only model: llama.cpp answers 500, on every replica."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": [image]}],
        "max_tokens": 2,
    }
    status, answer, headers = post(f"{router.url}/v1/chat/completions", body)
    assert status == 500 and "image input is not supported" in answer["error"]["message"]
    assert headers["X-Should-Retry"] == "false"
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=3)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model=MODEL,
            messages=body["messages"],
            max_tokens=2,
        )
    client.close()
    faults = "slurm_llm_router_request_faults_total"
    assert sample(router, faults, {"model": MODEL, "status": "500"}) == 2  # not 2 + 3 retries
    assert router.load(MODEL).routable == 2
    assert [b.failures for b in router.pool.of(MODEL)] == [0, 0]


@pytest.mark.parametrize(("path", "body"), COUNTING_STREAMS, ids=["text", "chat"])
@pytest.mark.single_process
def test_a_stream_whose_engine_is_killed_continues_on_the_other_replica(
    slurm_llm_home: Path, path: str, body: dict[str, Any]
) -> None:
    body = {"model": MODEL, "max_tokens": 48, "temperature": 0,
            "stream_options": {"include_usage": True}, **body}  # fmt: skip
    with (
        deploy_smollm2("failover", replicas=2, max_restarts=5) as deployment,
        RouterThread(
            home=slurm_llm_home, deployment="failover",
            config=RouterConfig(probes=ProbeConfig(interval_s=0)),
        ) as router,
    ):  # fmt: skip
        wait_until(lambda: router.load(MODEL).routable == 2, 60, "both replicas routable")
        whole = read_stream(router, MODEL, path, body).pieces
        pieces, events, errored, _ = read_killed_stream(router, MODEL, path, body, 10)
        assert not errored
        assert "".join(pieces[:10]) == "".join(whole[:10])  # what the client had before
        assert "".join(pieces) == "".join(whole)  # greedy: the continuation is the same text
        assert len({e["id"] for e in events}) == 1
        usage = events[-1]["usage"]
        assert usage["completion_tokens"] == 48
        labels = {"model": MODEL, "outcome": "continued"}
        assert sample(router, "slurm_llm_router_stream_continuations_total", labels) == 1
        assert len(deployment.records()) >= 1
