"""The router's side of a model scaled to zero, over real HTTP: no replica, no SLURM; the
controller is played by a ``scaling.json`` written here (a fake controller, for the router's
behaviour alone; ``tests/integration/test_autoscaling.py`` runs the real one)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from slurm_llm import Autoscale
from slurm_llm._api_keys import KeysFile
from slurm_llm._demand import DemandReport, demand_dir, remove_report, write_report
from slurm_llm._paths import deployments_dir
from slurm_llm._polling import wait_until
from slurm_llm.control._autoscale import ScalingRecord, scaling_path
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread, _elastic
from tests.integration.helpers import get_text, post


def asleep(home: Path) -> None:
    """A deployment at zero replicas whose controller has just written: its model is wakeable."""
    folder = deployments_dir(home) / "d"
    folder.mkdir(parents=True)
    record = ScalingRecord(deployment="d", model="m", bounds=Autoscale(max_replicas=1),
                           desired=0, ready=0, written=time.time())  # fmt: skip
    scaling_path(folder).write_text(record.model_dump_json())


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}


def listed_at_zero(router: RouterThread, headers: dict[str, str]) -> None:
    def listed() -> bool:
        request = urllib.request.Request(f"{router.url}/v1/models", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return b'"scaled to zero"' in response.read()

    assert wait_until(listed, 10, 0.05), "the router never listed the model at zero"


def leave_after_the_first_comment(router: RouterThread, headers: dict[str, str]) -> bytes:
    """A streamed chat that hangs up once it is told what it waits for; that line."""

    async def leave() -> bytes:
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.post(f"{router.url}/v1/chat/completions", json={**CHAT, "stream": True})
            as response,
        ):  # fmt: skip
            assert response.status == 200
            return await response.content.readline()

    return asyncio.run(leave())


@pytest.mark.single_process
def test_a_stream_whose_client_leaves_during_a_wake_up_is_counted_499_and_leaves_the_queue(
    tmp_path: Path,
) -> None:
    """Its response (200, with progress comments) began before it waited: the metrics must
    count what it ended with, not that 200."""
    asleep(tmp_path)
    config = RouterConfig(probes=ProbeConfig(interval_s=0))
    with RouterThread(home=tmp_path, deployment="d", config=config) as router:
        listed_at_zero(router, {})
        first = leave_after_the_first_comment(router, {})
        assert first.startswith(b": ")  # told what it waits for
        counted = r'requests_total\{endpoint="/v1/chat/completions",model="m",status="499"\} 1'
        left = wait_until(lambda: re.search(counted, get_text(f"{router.url}/metrics")), 10, 0.05)
        assert left, "the request that left was never counted as 499"
        assert router.load("m").queued == 0


@pytest.mark.single_process
def test_a_request_that_reached_no_replica_is_charged_no_tokens(tmp_path: Path) -> None:
    """A key with room for one chat's estimate: the chat that left during the wake-up used
    none of it, so the next one is admitted (and, from a router that rejects cold starts, told
    to come back) instead of refused for the key's limit."""
    asleep(tmp_path)
    keys = KeysFile(tmp_path / "keys.toml")
    key = keys.add("alice", tokens_per_minute=150)  # one chat's estimate: ~10 + 100 tokens
    config = RouterConfig(probes=ProbeConfig(interval_s=0), keys_file=keys.path,
                          cold_start="reject")  # fmt: skip
    with RouterThread(home=tmp_path, deployment="d", config=config) as router:
        listed_at_zero(router, {"X-API-Key": key})
        leave_after_the_first_comment(router, {"X-API-Key": key})
        left = wait_until(lambda: router.load("m").queued == 0, 10, 0.05)
        assert left, "the chat that hung up never left the queue"
        answer = post(f"{router.url}/v1/chat/completions", CHAT, {"X-API-Key": key})
    assert answer.status == 503 and "Retry-After" in answer.headers, answer.body


@pytest.mark.single_process
def test_a_report_still_being_written_when_the_router_stops_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop removes the report while a write of it is still in its thread (a stop does not
    wait for it); that write is held until after the removal, and the report must still end
    up gone, or controllers would count the stopped router's demand until it went stale."""
    asleep(tmp_path)
    writing, removed, written = threading.Event(), threading.Event(), threading.Event()

    def held_write(home: Path | None, report: DemandReport) -> None:
        writing.set()
        assert removed.wait(30), "the stop never removed the report"
        write_report(home, report)
        written.set()

    def seen_remove(home: Path | None, router: str) -> None:
        remove_report(home, router)
        removed.set()

    monkeypatch.setattr(_elastic, "write_report", held_write)
    monkeypatch.setattr(_elastic, "remove_report", seen_remove)
    config = RouterConfig(probes=ProbeConfig(interval_s=0))
    with RouterThread(home=tmp_path, deployment="d", config=config):
        assert writing.wait(10), "the router never wrote its demand report"
    assert written.wait(10), "the held write never ended"
    reports = demand_dir(tmp_path)
    assert wait_until(lambda: not any(reports.glob("*.json")), 10, 0.05), "a report was left"
