"""Small client-side helpers shared by the integration tests."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message
from typing import Any, NamedTuple

import openai

from slurm_llm import Deployment, EndpointRecord, ModelSpec, deploy

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


def deploy_smollm2(name: str, replicas: int = 1, **overrides: object) -> Deployment:
    spec = ModelSpec.preset("smollm2-135m", **overrides)
    return deploy(spec, replicas=replicas, executor="local", name=name, progress=False)


def wait_for_record(
    deployment: Deployment, changed: Callable[[EndpointRecord], bool], timeout: float = 60
) -> EndpointRecord | None:
    """The first live record of replica 0 for which ``changed`` holds, or None at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = deployment.records()
        if records and changed(records[0]):
            return records[0]
        time.sleep(0.1)
    return None
