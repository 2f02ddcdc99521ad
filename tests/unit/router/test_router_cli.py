"""``slurm-llm router`` announces its address only once it listens: a script that waits for
the "Routing ..." line and then sends its first request must not be refused. At SIGTERM it
stops listening and finishes the streams it has; with ``--reuse-port`` a new router takes the
port while the old one drains, so a restart cuts no stream and refuses no connection.

The upstream is a stand-in OpenAI server (an aiohttp app named as such) whose streams take a
second and a half."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

from slurm_llm._app_thread import AppThread


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def router_process(
    port: int, backend: str, home: Path, *options: str
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``slurm-llm router`` in its own process, once it said it routes; that line."""
    env = {**os.environ, "SLURM_LLM_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, "-m", "slurm_llm", "router", "--port", str(port),
         "--backend", f"m={backend}", "--probe-interval", "0", *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    ) as router:  # fmt: skip
        try:
            assert router.stdout is not None
            said = [router.stdout.readline()]
            while said[-1] and not said[-1].startswith("Routing"):
                said.append(router.stdout.readline())
            yield router, said[-1]
        finally:
            router.terminate()
            router.wait(timeout=30)


def test_the_router_answers_as_soon_as_it_says_it_routes(tmp_path: Path) -> None:
    port = free_port()
    with router_process(port, "http://127.0.0.1:9", tmp_path) as (_, said):
        assert said.startswith(f"Routing m=http://127.0.0.1:9 on http://127.0.0.1:{port}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            assert answer.status == 200  # the first try: no retry, no wait


class SlowStreams(AppThread):
    """A stand-in OpenAI server (not an engine): each stream is 6 events, 0.25 s apart."""

    def __init__(self) -> None:
        self.begun = 0
        app = web.Application()
        app.router.add_post("/v1/completions", self.stream)
        super().__init__(app)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.begun += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for n in range(6):
            await asyncio.sleep(0.25)
            await response.write(f'data: {{"choices": [{{"text": " {n}"}}]}}\n\n'.encode())
        await response.write(b"data: [DONE]\n\n")
        return response


def stream_text(port: int) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=b'{"model": "m", "prompt": "x", "stream": true}',
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return "".join(
            json.loads(line[5:])["choices"][0]["text"]
            for line in response
            if line.startswith(b"data: {")
        )


def test_a_restart_with_reuse_port_cuts_no_stream_and_refuses_no_connection(
    tmp_path: Path,
) -> None:
    port = free_port()
    with (
        SlowStreams() as upstream,
        ThreadPoolExecutor(4) as pool,
        router_process(port, upstream.url, tmp_path, "--reuse-port") as (old, _),
    ):
        in_flight = [pool.submit(stream_text, port) for _ in range(3)]
        deadline = time.monotonic() + 10
        while upstream.begun < 3 and time.monotonic() < deadline:  # the streams have begun
            time.sleep(0.02)
        with router_process(port, upstream.url, tmp_path, "--reuse-port") as (new, _):
            old.send_signal(signal.SIGTERM)
            assert [f.result() for f in in_flight] == [" 0 1 2 3 4 5"] * 3
            assert old.wait(timeout=10) == 0
            assert stream_text(port) == " 0 1 2 3 4 5"  # the new one has the port
            assert new.poll() is None
