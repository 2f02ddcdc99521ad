"""The console's files and the operations' APIs, over real HTTP: the files are served without a
key and load nothing from elsewhere; what they show needs the key, and what changes or reveals
the service needs an operator's."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slurm_llm._api_keys import KeysFile
from slurm_llm._errors import SlurmLLMError
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread
from slurm_llm.router._backends import BackendPool
from slurm_llm.router._console import POLICY, asset_names
from slurm_llm.router._deployments_api import (
    LOG_TAIL_BYTES,
    LOG_TAIL_LINES,
    VIEW,
    DeploymentsView,
    log_tail,
)
from slurm_llm.router._errors import RouterError
from slurm_llm.router._state import RouterState
from slurm_llm.router._verdicts_api import chosen
from slurm_llm.tribunal import VerdictLog

EXTERNAL = re.compile(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", re.IGNORECASE)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    keys = KeysFile(tmp_path_factory.mktemp("keys") / "keys.toml")
    return {"path": str(keys.path), "admin": keys.add("admin", operator=True),
            "user": keys.add("user")}  # fmt: skip


@pytest.fixture(scope="module")
def router(
    keys: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RouterThread]:
    log = tmp_path_factory.mktemp("tribunal") / "verdicts.jsonl"
    for outcome, mode in (("accepted", "full"), ("rejected", "full"), ("accepted", "base-only")):
        VerdictLog(log).append({"outcome": outcome, "mode": mode, "laws": "academic@1",
                                "prompt": f"{outcome} {mode}", "rounds": []})  # fmt: skip
    config = RouterConfig(probes=ProbeConfig(interval_s=0), keys_file=Path(keys["path"]),
                          verdict_log=log)  # fmt: skip
    with RouterThread(static=[("m", "http://127.0.0.1:9")], config=config) as running:
        yield running


def call(
    url: str, key: str | None = None, method: str = "GET", body: Any = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), refused.read()


def test_the_console_is_served_without_a_key_and_loads_nothing_from_elsewhere(
    router: RouterThread,
) -> None:
    status, headers, page = call(f"{router.url}/ui")  # redirected to /ui/
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"<title>slurm-llm console</title>" in page
    assert headers["Content-Security-Policy"] == POLICY and "default-src 'none'" in POLICY
    assert set(asset_names()) >= {"index.html", "console.js", "console.css"}
    for name in asset_names():
        status, headers, body = call(f"{router.url}/ui/{name}")
        assert status == 200, name
        assert not EXTERNAL.search(body.decode()), f"{name} loads something from elsewhere"
    assert call(f"{router.url}/ui/nothing.js")[0] == 401  # not a console file: the key's rules


def test_a_router_without_the_console_serves_no_page() -> None:
    config = RouterConfig(probes=ProbeConfig(interval_s=0), ui=False)
    with RouterThread(static=[("m", "http://127.0.0.1:9")], config=config) as running:
        assert call(f"{running.url}/ui/")[0] == 404
        assert call(f"{running.url}/v1/stats")[0] == 200  # its APIs stay


def test_a_router_without_keys_shows_everything_and_lets_nobody_scale_or_stop() -> None:
    config = RouterConfig(probes=ProbeConfig(interval_s=0))
    with RouterThread(static=[("m", "http://127.0.0.1:9")], config=config) as running:
        assert call(f"{running.url}/v1/verdicts")[0] == 200
        assert call(f"{running.url}/v1/stats?keys=1")[0] == 200
        status, _, body = call(f"{running.url}/v1/deployments/any/scale", method="POST",
                               body={"replicas": 0})  # fmt: skip
        assert status == 403 and b"this router has no keys" in body


def test_what_the_console_shows_needs_a_valid_key(router: RouterThread) -> None:
    for path in ("/v1/deployments", "/v1/stats", "/v1/verdicts"):
        status, _, body = call(f"{router.url}{path}", key="not-a-key")
        assert status == 401 and b"not valid" in body, path


def test_a_router_of_fixed_replicas_has_no_deployments(
    router: RouterThread, keys: dict[str, str]
) -> None:
    status, _, body = call(f"{router.url}/v1/deployments", key=keys["user"])
    assert status == 200 and json.loads(body) == {"deployments": []}


def test_only_an_operator_may_scale_or_stop(router: RouterThread, keys: dict[str, str]) -> None:
    scale = f"{router.url}/v1/deployments/any/scale"
    status, _, body = call(scale, key=keys["user"], method="POST", body={"replicas": 2})
    assert status == 403 and b"operator" in body
    status, _, body = call(f"{router.url}/v1/deployments/any", key=keys["user"], method="DELETE")
    assert status == 403
    status, _, body = call(scale, key=keys["admin"], method="POST", body={"replicas": 2})
    assert status == 404 and b"no deployment 'any'" in body


def test_usage_per_key_and_the_verdicts_are_an_operators(
    router: RouterThread, keys: dict[str, str]
) -> None:
    assert call(f"{router.url}/v1/stats?keys=1", key=keys["user"])[0] == 403
    status, _, body = call(f"{router.url}/v1/stats?keys=1", key=keys["admin"])
    assert status == 200 and "keys" in json.loads(body)
    assert call(f"{router.url}/v1/verdicts", key=keys["user"])[0] == 403
    assert call(f"{router.url}/v1/verdicts?limit=%C2%B2", key=keys["admin"])[0] == 400
    status, _, body = call(f"{router.url}/v1/verdicts?outcome=accepted", key=keys["admin"])
    found = json.loads(body)
    assert status == 200 and found["total"] == 3
    assert [run["prompt"] for run in found["runs"]] == ["accepted base-only", "accepted full"]
    assert found["filters"]["mode"] == ["base-only", "full"]


@pytest.mark.parametrize("query", ["minutes=0", "minutes=11", "minutes=soon"])
def test_a_bad_period_is_refused_with_what_is_allowed(
    router: RouterThread, keys: dict[str, str], query: str
) -> None:
    status, _, body = call(f"{router.url}/v1/stats?{query}", key=keys["user"])
    assert status == 400 and b"minutes must be a number from 0 to 10" in body


def test_the_verdict_filters_combine() -> None:
    runs = [{"outcome": "accepted", "mode": "full"}, {"outcome": "accepted", "mode": "reduced"},
            {"outcome": "rejected", "mode": "full"}]  # fmt: skip
    picked, values = chosen(runs, {"outcome": "accepted", "mode": "full"}, limit=10)
    assert picked == [runs[0]] and values["outcome"] == ["accepted", "rejected"]
    assert chosen(runs, {}, limit=2)[0] == [runs[2], runs[1]]  # newest first


def test_a_log_tail_is_the_logs_last_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "replica.log"
    log.write_text("".join(f"line {n} {'x' * 200}\n" for n in range(1000)))
    tail = log_tail(str(log))
    assert len(tail) == LOG_TAIL_LINES and tail[-1].startswith("line 999 ")
    assert log.stat().st_size > LOG_TAIL_BYTES
    assert log_tail(str(tmp_path / "gone.log")) == [] and log_tail(None) == []


def test_a_deployments_reading_that_fails_is_a_503_and_the_next_look_reads_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = BackendPool(None, static=[("m", "http://127.0.0.1:9")])
    view = DeploymentsView(RouterState(RouterConfig(), pool))

    def unreachable() -> list[dict[str, Any]]:
        raise SlurmLLMError("squeue: error: Unable to contact slurm controller")

    monkeypatch.setattr(view, "read_all", unreachable)
    with pytest.raises(RouterError, match="Unable to contact") as caught:
        asyncio.run(view.current())
    assert caught.value.status == 503 and caught.value.retry_after == 2
    monkeypatch.setattr(view, "read_all", lambda: [{"name": "back"}])
    assert asyncio.run(view.current()) == [{"name": "back"}]


@pytest.mark.single_process
def test_replicas_logs_are_shown_only_to_operators(
    router: RouterThread, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = {"replica": 0, "state": "failed", "log_tail": ["prompt: my secret question"]}
    monkeypatch.setattr(DeploymentsView, "read_all", lambda self: [{"replicas": [replica]}])
    router.app[VIEW].forget()
    shown = {
        who: json.loads(call(f"{router.url}/v1/deployments", key=keys[who])[2])
        for who in ("user", "admin")
    }
    assert shown["user"]["deployments"][0]["replicas"][0]["log_tail"] == []
    assert shown["admin"]["deployments"][0]["replicas"][0]["log_tail"] == replica["log_tail"]


def test_a_change_makes_a_reading_begun_before_it_stale_for_everyone() -> None:
    pool = BackendPool(None, static=[("m", "http://127.0.0.1:9")])
    view = DeploymentsView(RouterState(RouterConfig(), pool))
    release = threading.Event()
    readings: list[int] = []

    def slow_reading() -> list[dict[str, Any]]:
        readings.append(len(readings) + 1)
        number = readings[-1]
        release.wait(10)
        return [{"reading": number}]

    view.read_all = slow_reading  # type: ignore[method-assign]

    async def look() -> None:
        before = asyncio.create_task(view.current())
        await asyncio.sleep(0.05)
        view.forget()  # a scale, while the first reading runs
        after = asyncio.create_task(view.current())
        await asyncio.sleep(0.05)
        release.set()
        assert await before == [{"reading": 1}]  # its own waiter gets it...
        assert await after == [{"reading": 2}]  # ...but whoever came after the change reads anew
        assert await view.current() == [{"reading": 2}]  # and only the new one is kept

    asyncio.run(look())
    assert readings == [1, 2]
