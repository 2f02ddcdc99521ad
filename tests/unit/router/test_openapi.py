"""The published API: every route the router serves is in ``/openapi.json`` (from the same
models the bodies are checked with), and ``/docs`` shows it without anything from elsewhere."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator

import pytest

from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread
from slurm_llm.router._schemas import ChatCompletionRequest


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    config = RouterConfig(probes=ProbeConfig(interval_s=0), api_keys=frozenset({"secret"}))
    with RouterThread(static=[("m", "http://127.0.0.1:9")], config=config) as running:
        yield running


def fetch(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.headers["Content-Type"], reply.read().decode()


@pytest.mark.single_process
def test_every_route_is_documented(router: RouterThread) -> None:
    kind, text = fetch(f"{router.url}/openapi.json")  # no key needed, though keys are on
    document = json.loads(text)
    assert kind.startswith("application/json") and document["openapi"] == "3.1.0"
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in router.app.router.routes()
        if route.resource is not None and route.method not in ("HEAD", "*")
    }  # "*": what no route serves (a JSON 404 or 405, tests/unit/router/test_routes.py)
    documented = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert served == documented


def test_request_schemas_are_the_checked_models(router: RouterThread) -> None:
    document = json.loads(fetch(f"{router.url}/openapi.json")[1])
    chat = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    name = chat["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    published = document["components"]["schemas"][name]
    checked = ChatCompletionRequest.model_json_schema()
    assert set(published["properties"]) == set(checked["properties"])
    assert published["required"] == ["model", "messages"]


def test_the_docs_page_lists_every_route_and_loads_nothing_from_elsewhere(
    router: RouterThread,
) -> None:
    kind, page = fetch(f"{router.url}/docs")
    assert kind.startswith("text/html")
    document = json.loads(fetch(f"{router.url}/openapi.json")[1])
    for path in document["paths"]:
        assert f'<span class="path">{path}</span>' in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
