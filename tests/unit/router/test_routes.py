"""Every route's handler is behind the same checks (``_app.checked``); a request no route serves
gets a JSON error that says what is there, and is counted as ``unmatched``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from slurm_llm._polling import wait_until
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread
from tests.integration.helpers import get_text, post


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    config = RouterConfig(probes=ProbeConfig(interval_s=0))
    with RouterThread(static=[("m", "http://127.0.0.1:9")], config=config) as running:
        yield running


def get_error(url: str) -> tuple[int, dict[str, Any]]:
    try:
        urllib.request.urlopen(url, timeout=30).close()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    raise AssertionError(f"GET {url} succeeded")


def test_a_path_no_route_serves_is_a_json_404(router: RouterThread) -> None:
    status, answer, _ = post(f"{router.url}/v1/chat/complete", {"model": "m"})
    assert status == 404
    message = answer["error"]["message"]
    assert message == "there is no /v1/chat/complete here; see /docs for the APIs"


def test_another_method_on_a_route_is_a_json_405_naming_the_ones_it_takes(
    router: RouterThread,
) -> None:
    status, answer, headers = post(f"{router.url}/v1/models", {})
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert answer["error"]["message"] == "/v1/models takes GET, HEAD, not POST"
    status, answer = get_error(f"{router.url}/v1/chat/completions")
    assert status == 405
    assert answer["error"]["message"] == "/v1/chat/completions takes POST, not GET"


def test_requests_no_route_serves_are_counted_as_unmatched(router: RouterThread) -> None:
    post(f"{router.url}/nowhere", {})
    counted = 'slurm_llm_router_requests_total{endpoint="unmatched",model="unknown",status="404"}'
    # with several workers, the others' counts reach a scrape within a second
    assert wait_until(lambda: counted in get_text(f"{router.url}/metrics"), 10, 0.1)
