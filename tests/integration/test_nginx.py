"""Real nginx in front of stand-in upstreams: routing by model prefix, streaming, reloads.

The upstreams are small aiohttp servers started by the tests (stand-ins for engine replicas),
so what is tested is nginx and its configuration, in a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from slurm_llm.nginx import NginxConfig, NginxError, NginxServer, ensure_nginx
from slurm_llm.node._ports import lease_port
from tests.integration.helpers import openai_client

pytestmark = pytest.mark.nginx


class StandInUpstream:
    """A stand-in for an engine replica, serving in a thread of the test process.

    ``/v1/chat/completions`` answers with the path it was asked for and its own name; streamed,
    it sends ``chunks`` SSE events, each only once the client has called ``release(gate)``
    (lockstep), or every ``delay`` seconds when no gate is given.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> StandInUpstream:
        self._thread.start()
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def release(self, gate: str) -> None:
        self._loop.call_soon_threadsafe(self._gate(gate).release)

    def _gate(self, gate: str) -> asyncio.Semaphore:
        return self._gates.setdefault(gate, asyncio.Semaphore(0))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.json()
        content = f"{self.name} {request.path}"
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": f"chatcmpl-{self.name}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        gate = body.get("gate")
        for index in range(int(body.get("chunks", 3))):
            if gate:
                await asyncio.wait_for(self._gate(gate).acquire(), 10)
            else:
                await asyncio.sleep(float(body.get("delay", 0)))
            chunk = {"choices": [{"index": 0, "delta": {"content": f"{index} "}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    try:
        return ensure_nginx()
    except NginxError as error:
        if os.geteuid() != 0:
            pytest.skip(str(error))
        raise


@pytest.fixture
def upstreams() -> Iterator[list[StandInUpstream]]:
    started = [StandInUpstream(name).start() for name in ("a", "b")]
    yield started
    for upstream in started:
        upstream.stop()


@pytest.fixture
def port() -> Iterator[int]:
    with lease_port("127.0.0.1") as lease:
        yield lease.port


def chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_each_model_is_served_under_its_prefix_as_v1(
    nginx_binary: str, upstreams: list[StandInUpstream], tmp_path: Path, port: int
) -> None:
    a, b = upstreams
    config = NginxConfig({"smollm2": [a.url], "org/model-b": [b.url]}, tmp_path, port=port)
    with NginxServer(config, nginx_binary) as nginx:
        for model, replica in (("smollm2", "a"), ("org/model-b", "b")):
            answer = openai_client(f"{nginx.url}/{model}").chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices[0].message.content == f"{replica} /v1/chat/completions"

        async def plain_gets() -> tuple[int, dict[str, object], int, dict[str, object]]:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{nginx.url}/health") as health:
                    health_body = await health.json()
                async with session.post(f"{nginx.url}/llama/v1/chat/completions") as unknown:
                    return health.status, health_body, unknown.status, await unknown.json()

        health_status, health, unknown_status, unknown = asyncio.run(plain_gets())
    assert health_status == 200 and health["models"] == ["org/model-b", "smollm2"]
    assert unknown_status == 404
    assert unknown["error"]["models"] == ["org/model-b", "smollm2"]  # type: ignore[index]
    assert "one of: org/model-b, smollm2" in unknown["error"]["message"]  # type: ignore[index]
    assert "upstream=127.0.0.1:" in (tmp_path / "logs" / "access.log").read_text()


def test_a_stream_passes_through_chunk_by_chunk(
    nginx_binary: str, upstreams: list[StandInUpstream], tmp_path: Path, port: int
) -> None:
    """The stand-in sends each chunk only after the client has read the previous one, so a
    buffering proxy would deadlock this test instead of passing it slowly."""
    a, _ = upstreams
    config = NginxConfig({"m": [a.url]}, tmp_path, port=port)

    async def lockstep(url: str) -> list[str]:
        received: list[str] = []
        async with aiohttp.ClientSession() as session:
            body = chat("m", stream=True, chunks=5, gate="g1")
            async with session.post(f"{url}/m/v1/chat/completions", json=body) as response:
                assert response.status == 200
                a.release("g1")
                while True:
                    line = await asyncio.wait_for(response.content.readline(), 5)
                    if line.strip():
                        received.append(line.decode().strip())
                        if line.strip() == b"data: [DONE]":
                            return received
                        a.release("g1")

    with NginxServer(config, nginx_binary) as nginx:
        received = asyncio.run(lockstep(nginx.url))
    assert len(received) == 6 and received[-1] == "data: [DONE]"
    assert [json.loads(r[6:])["choices"][0]["delta"]["content"] for r in received[:-1]] == [
        "0 ", "1 ", "2 ", "3 ", "4 ",
    ]  # fmt: skip


def test_a_configuration_nginx_rejects_fails_with_nginx_own_words(
    nginx_binary: str, tmp_path: Path, port: int
) -> None:
    config = NginxConfig({"m": ["http://no-such-host.invalid:8000"]}, tmp_path, port=port)
    nginx = NginxServer(config, nginx_binary)
    with pytest.raises(NginxError, match=r"(?s)rejected the configuration.*host not found"):
        nginx.start()
    assert nginx.pid is None


def test_a_dead_replica_is_skipped(
    nginx_binary: str, upstreams: list[StandInUpstream], tmp_path: Path, port: int
) -> None:
    a, _ = upstreams
    with lease_port("127.0.0.1") as dead:
        config = NginxConfig({"m": [f"http://127.0.0.1:{dead.port}", a.url]}, tmp_path, port=port)
        with NginxServer(config, nginx_binary) as nginx:
            for _ in range(6):
                answer = openai_client(f"{nginx.url}/m").chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}]
                )
                assert answer.choices[0].message.content == "a /v1/chat/completions"


def test_reload_while_requests_are_in_flight_loses_none(
    nginx_binary: str, upstreams: list[StandInUpstream], tmp_path: Path, port: int
) -> None:
    """Twenty streams and a stream of short requests run across a reload that adds a replica
    and a model: every stream ends with all its chunks, every short request succeeds.

    The short requests open a connection each. On reload the old workers close their *idle*
    keep-alive connections, and a client that sends on one at that very moment sees it closed
    before any answer (the usual HTTP/1.1 keep-alive race, which clients such as the OpenAI SDK
    retry); what must not happen is a request nginx accepted and then dropped."""
    a, b = upstreams
    before = NginxConfig({"m": [a.url]}, tmp_path, port=port)
    after = NginxConfig({"m": [a.url, b.url], "n": [b.url]}, tmp_path, port=port)

    async def traffic(url: str, reload_now: asyncio.Event) -> tuple[list[int], list[int]]:
        async with (
            aiohttp.ClientSession() as session,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh,
        ):

            async def stream() -> int:
                body = chat("m", stream=True, chunks=10, delay=0.08)
                async with session.post(f"{url}/m/v1/chat/completions", json=body) as response:
                    text = await response.text()
                return text.count("data: ") if response.status == 200 else -response.status

            async def short_requests() -> list[int]:
                statuses = []
                deadline = time.monotonic() + 1.2
                while time.monotonic() < deadline:
                    body = chat("m")
                    async with fresh.post(f"{url}/m/v1/chat/completions", json=body) as answer:
                        await answer.read()
                        statuses.append(answer.status)
                    if len(statuses) == 5:
                        reload_now.set()
                return statuses

            streams = [asyncio.create_task(stream()) for _ in range(20)]
            statuses = await short_requests()
            return list(await asyncio.gather(*streams)), statuses

    with NginxServer(before, nginx_binary) as nginx:

        async def run() -> tuple[list[int], list[int]]:
            reload_now = asyncio.Event()
            task = asyncio.create_task(traffic(nginx.url, reload_now))
            await reload_now.wait()
            await asyncio.to_thread(nginx.reload, after)
            return await task

        chunks, statuses = asyncio.run(run())
        assert nginx.config.upstreams == after.upstreams
        answer = openai_client(f"{nginx.url}/n").chat.completions.create(
            model="n", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content == "b /v1/chat/completions"
    assert chunks == [11] * 20
    assert len(statuses) > 10 and set(statuses) == {200}
    assert b.requests > 1  # the added replica took part once the reload was served
