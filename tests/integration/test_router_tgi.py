"""Code written for TGI's ``text-generation`` client works through the router, whatever engine
serves the model."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from text_generation import AsyncClient, Client
from text_generation.errors import NotFoundError, ValidationError, parse_error

from slurm_llm import EndpointRecord, Registry
from slurm_llm._app_thread import AppThread
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread
from tests.integration.helpers import post

pytestmark = pytest.mark.llamacpp


def test_generate_on_a_llamacpp_replica(router: RouterThread) -> None:
    client = Client(f"{router.url}/models/smollm2", timeout=60)
    answer = client.generate("The capital of France is", max_new_tokens=6)
    assert answer.generated_text
    assert answer.details.generated_tokens == 6
    assert answer.details.finish_reason == "length"


def test_generate_stream_token_by_token(router: RouterThread) -> None:
    client = Client(f"{router.url}/models/smollm2", timeout=60)
    events = list(client.generate_stream("Count: one, two,", max_new_tokens=8))
    assert len(events) >= 8
    assert events[-1].generated_text == "".join(event.token.text for event in events)
    assert events[-1].details is not None and events[-1].details.generated_tokens == 8
    assert all(event.generated_text is None for event in events[:-1])


def test_the_async_client_and_the_bare_routes_work_when_one_model_is_served(
    router: RouterThread,
) -> None:
    async def both() -> tuple[str, list[str]]:
        client = AsyncClient(router.url, timeout=60)
        answer = await client.generate("Hello", max_new_tokens=3)
        pieces = [
            event.token.text async for event in client.generate_stream("Hi", max_new_tokens=3)
        ]
        return answer.generated_text, pieces

    text, pieces = asyncio.run(both())
    assert text and len(pieces) >= 3


def test_bad_tgi_requests_raise_the_clients_own_exceptions(router: RouterThread) -> None:
    with pytest.raises(NotFoundError, match="'gpt-9' is not served here; available: smollm2"):
        Client(f"{router.url}/models/gpt-9").generate("x")
    status, body, _ = post(f"{router.url}/models/smollm2/generate", {"parameters": {}})
    assert status == 400
    assert isinstance(parse_error(status, body), ValidationError)
    assert "the field 'inputs' is required" in body["error"]


class StandInTgi(AppThread):
    """A stand-in for TGI's server (its binary cannot run here): answers ``/generate`` and
    ``/generate_stream`` in TGI's own shapes, so the router must pass them through untouched."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        app = web.Application()
        app.router.add_post("/generate", self.generate)
        app.router.add_post("/generate_stream", self.stream)
        super().__init__(app)

    async def generate(self, request: web.Request) -> web.Response:
        self.seen.append(request.path)
        body = await request.json()
        details = {"finish_reason": "length", "generated_tokens": 1, "seed": None,
                   "prefill": [], "tokens": []}  # fmt: skip
        return web.json_response({"generated_text": f"native:{body['inputs']}", "details": details})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.path)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        token = {"id": 7, "text": "native", "logprob": -0.1, "special": False}
        details = {"finish_reason": "length", "generated_tokens": 1, "seed": None}
        event = {"index": 1, "token": token, "generated_text": "native", "details": details}
        await response.write(f"data:{json.dumps(event)}\n\n".encode())
        return response


@pytest.fixture
def tgi_replica(tmp_path: Path) -> Iterator[tuple[StandInTgi, Path]]:
    with StandInTgi() as server:
        now = time.time()
        record = EndpointRecord(
            deployment="tgi", replica=0, model="tgi-model", engine="tgi",
            url=server.url, node=socket.gethostname(), job_id="1",
            launcher_pid=os.getpid(), engine_pid=os.getpid(), gpus=[], started=now, ready=now,
            heartbeat=now,
        )  # fmt: skip
        Registry(tmp_path / "registry").publish(record)
        yield server, tmp_path


def test_tgi_replicas_get_tgi_requests_unchanged(tgi_replica: tuple[StandInTgi, Path]) -> None:
    server, home = tgi_replica
    config = RouterConfig(probes=ProbeConfig(interval_s=0))
    with RouterThread(home=home, config=config) as router:
        client = Client(f"{router.url}/models/tgi-model", timeout=10)
        assert client.generate("hi").generated_text == "native:hi"
        (event,) = client.generate_stream("hi")
        assert event.token.id == 7 and event.generated_text == "native"
    assert server.seen == ["/generate", "/generate_stream"]
