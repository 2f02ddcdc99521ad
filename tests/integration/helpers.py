"""Small client-side helpers shared by the integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from email.message import Message
from typing import Any, NamedTuple

import openai

from slurm_llm import Deployment, EndpointRecord, ModelSpec, _polling, deploy
from slurm_llm.router import RouterThread

_CLIENTS: dict[str, openai.OpenAI] = {}


def openai_client(url: str) -> openai.OpenAI:
    """One client per server for the whole session, as applications use it; a client per call
    left its connections to the garbage collector, whose ResourceWarnings then failed
    whichever test happened to be running."""
    if url not in _CLIENTS:
        _CLIENTS[url] = openai.OpenAI(
            base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120
        )
    return _CLIENTS[url]


def close_clients() -> None:
    while _CLIENTS:
        _CLIENTS.popitem()[1].close()


def streamed_pieces(url: str, model: str) -> list[str]:
    """Content pieces of a streamed chat completion, one per SSE chunk that carried text."""
    stream = openai_client(url).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count from one to ten."}],
        max_tokens=16,
        stream=True,
    )
    return [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]


class HttpReply(NamedTuple):
    status: int
    body: Any  # parsed JSON
    headers: Message


def post(
    url: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
) -> HttpReply:
    """A plain HTTP POST that returns error answers instead of raising, to check them."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return HttpReply(response.status, json.loads(response.read()), response.headers)
    except urllib.error.HTTPError as exc:
        return HttpReply(exc.code, json.loads(exc.read()), exc.headers)


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return str(reply.read().decode())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def router_process(*options: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``slurm-llm router OPTIONS`` in a process of its own, and its URL once ``/ready``
    answers; stopped at the end unless the test killed it."""
    port = free_port()
    argv = [sys.executable, "-m", "slurm_llm", "router", "--port", str(port), *options]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                get_text(f"{url}/ready")
                break
            except OSError:
                assert time.monotonic() < deadline, "the router never became ready"
                time.sleep(0.2)
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(10)


def deploy_smollm2(name: str, replicas: int = 1, **overrides: object) -> Deployment:
    spec = ModelSpec.preset("smollm2-135m", **overrides)
    return deploy(spec, replicas=replicas, executor="local", name=name, progress=False)


def wait_for_record(
    deployment: Deployment, changed: Callable[[EndpointRecord], bool], timeout: float = 60
) -> EndpointRecord | None:
    """The first live record of replica 0 for which ``changed`` holds, or None at the timeout."""
    for _ in _polling.polling(timeout, every=0.1):
        records = deployment.records()
        if records and changed(records[0]):
            return records[0]
    return None


def wait_until(
    condition: Callable[[], object],
    timeout: float = 10,
    what: str = "the condition",
    every: float = 0.1,
) -> None:
    """Polls ``condition`` until it holds; fails naming ``what`` at the timeout, so that a test
    that waits says what it waited for instead of hanging or failing later on a stale state."""
    if not _polling.wait_until(condition, timeout, every):
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def cli(*args: str, check: bool = True, timeout: float = 180) -> str:
    """``slurm-llm ARGS`` in a process of its own, as a user types it; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "slurm_llm", *args], capture_output=True, text=True,
        check=False, timeout=timeout, env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"slurm-llm {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


# (path, body) of a streamed text and chat completion long enough to kill an engine mid-way.
COUNTING_STREAMS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/completions", {"prompt": "Counting: 1, 2, 3, 4,"}),
    ("/v1/chat/completions",
     {"messages": [{"role": "user", "content": "Count from 1 to 50 in words."}]}),
]  # fmt: skip


class Stream(NamedTuple):
    """What a client read from one stream: its text pieces, its events, whether an error event
    came, and whether the engine serving it was killed mid-way."""

    pieces: list[str]
    events: list[dict[str, Any]]
    errored: bool
    killed: bool


def read_stream(
    router: RouterThread,
    model: str,
    path: str,
    body: dict[str, Any],
    kill_after: int | None = None,
) -> Stream:
    """Read one stream; with ``kill_after``, the engine serving it is killed (SIGKILL) once that
    many pieces have arrived, if the router is still relaying it then: a fast engine on a busy
    machine can finish before the client has read that far, and ``killed`` then says so."""
    request = urllib.request.Request(
        f"{router.url}{path}", data=json.dumps({**body, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    pieces: list[str] = []
    events: list[dict[str, Any]] = []
    errored = killed = False
    with urllib.request.urlopen(request, timeout=120) as response:
        for line in response:
            data = line.removeprefix(b"data:").strip()
            if not line.startswith(b"data:") or data == b"[DONE]":
                continue
            event = json.loads(data)
            events.append(event)
            errored = errored or "error" in event
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or choice.get("text")
                if piece:
                    pieces.append(piece)
            if kill_after is not None and len(pieces) == kill_after:
                busy = [b for b in router.pool.of(model) if b.in_flight]
                if busy:
                    assert router.pool.registry is not None, "the router reads a registry"
                    records = router.pool.registry.records()
                    [record] = [r for r in records if r.url == busy[0].url]
                    os.kill(record.engine_pid, signal.SIGKILL)
                    killed = True
    return Stream(pieces, events, errored, killed)


def read_killed_stream(
    router: RouterThread,
    model: str,
    path: str,
    body: dict[str, Any],
    kill_after: int,
    attempts: int = 3,
) -> Stream:
    """A stream whose engine was killed after ``kill_after`` pieces. A stream that ended before
    the kill could land says nothing about failover, so it is read again, a few times at most."""
    for _ in range(attempts):
        stream = read_stream(router, model, path, body, kill_after)
        if stream.killed:
            return stream
    raise AssertionError(
        f"every one of {attempts} streams ended before its client had read {kill_after} pieces"
    )
