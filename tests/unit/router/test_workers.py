"""``slurm-llm router --workers N``: N router processes on one port, each with its share of every
replica's slots; one that dies is started again; SIGTERM drains them all; ``/metrics`` sums
them. Real processes and sockets; the upstreams are stand-in OpenAI servers (aiohttp apps
named as such)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from slurm_llm._app_thread import AppThread
from slurm_llm._polling import wait_until
from slurm_llm.router._admission import Admission
from slurm_llm.router._backends import Backend, BackendPool, slot_share
from slurm_llm.router._metrics import SharedReplicaGauges
from slurm_llm.router._policies import make_policy
from tests.unit.router.test_router_cli import SlowStreams, free_port, router_process, stream_text


class CountingUpstream(AppThread):
    """A stand-in OpenAI server whose answers take ``hold_s``; it counts the most requests it
    had at once."""

    def __init__(self, hold_s: float = 0.0) -> None:
        self.hold_s = hold_s
        self.now = 0
        self.most = 0
        self.requests = 0
        app = web.Application()
        app.router.add_post("/v1/completions", self.complete)
        super().__init__(app)

    async def complete(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(self.hold_s)
        self.now -= 1
        return web.json_response({"choices": [{"text": "hi"}]})


def complete(port: int, headers: dict[str, str] | None = None) -> int:
    """One completion on a connection of its own; its status."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=b'{"model": "m", "prompt": "x"}',
        headers={"Content-Type": "application/json", "Connection": "close", **(headers or {})},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return int(answer.status)


def metric(port: int, name: str) -> float:
    """The sum of a metric's samples on the router's ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(value) for value in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))


def records_per_file(folder: Path) -> dict[str, int]:
    """The usage records in each usage file that has some."""
    counts = {f.name: len(f.read_text().splitlines()) for f in folder.glob("*.jsonl")}
    return {name: count for name, count in counts.items() if count}


def workers_of(supervisor: int) -> set[int]:
    """The supervisor's worker processes (its children other than multiprocessing's tracker)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"PPid:\t{supervisor}\n" in status and b"spawn_main" in command:
            found.add(int(entry.name))
    return found


@pytest.fixture
def upstream() -> Iterator[CountingUpstream]:
    with CountingUpstream() as server:
        yield server


@given(slots=st.integers(1, 512), workers=st.integers(1, 16))
def test_the_workers_shares_add_up_to_the_replicas_slots(slots: int, workers: int) -> None:
    shares = [slot_share(slots, worker, workers) for worker in range(workers)]
    assert min(shares) >= 1  # every worker can reach every replica
    assert sum(shares) == max(slots, workers)  # never more, unless fewer slots than workers
    assert max(shares) - min(shares) <= 1


def test_two_workers_serve_one_port_and_their_metrics_are_summed(
    tmp_path: Path, upstream: CountingUpstream
) -> None:
    port = free_port()
    with router_process(port, upstream.url, tmp_path, "--workers", "2"):
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(lambda _: complete(port), range(40))) == [200] * 40
        assert wait_until(lambda: metric(port, "slurm_llm_router_requests_total") == 40, 10, 0.1)
        assert metric(port, "slurm_llm_router_replica_limit") == 8  # 4 + 4: the replica's 8
        # Each worker keeps its own usage file (written once a second): both served.
        usage = tmp_path / "usage"
        assert wait_until(lambda: sum(records_per_file(usage).values()) == 40, 10, 0.1)
        assert len(records_per_file(usage)) == 2


def test_a_replica_gets_no_more_than_its_slots_across_workers(tmp_path: Path) -> None:
    with CountingUpstream(hold_s=0.3) as upstream:
        port = free_port()
        options = ("--workers", "2", "--replica-limit", "3")
        with router_process(port, upstream.url, tmp_path, *options), ThreadPoolExecutor(12) as pool:
            assert list(pool.map(lambda _: complete(port), range(24))) == [200] * 24
        assert upstream.most <= 3


def test_a_worker_that_dies_is_started_again(tmp_path: Path, upstream: CountingUpstream) -> None:
    port = free_port()
    with router_process(port, upstream.url, tmp_path, "--workers", "2") as (router, _):
        first = workers_of(router.pid)
        assert len(first) == 2
        killed = min(first)
        os.kill(killed, signal.SIGKILL)
        replaced = lambda: len(now := workers_of(router.pid)) == 2 and killed not in now  # noqa: E731
        assert wait_until(replaced, 30, 0.1)
        # Until the new worker listens, connections go to the other one: none is refused.
        assert all(complete(port) == 200 for _ in range(20))
        assert router.poll() is None


def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    port = free_port()
    with (
        SlowStreams() as upstream,
        ThreadPoolExecutor(6) as pool,
        router_process(port, upstream.url, tmp_path, "--workers", "2") as (router, _),
    ):
        in_flight = [pool.submit(stream_text, port) for _ in range(6)]
        assert wait_until(lambda: upstream.begun >= 6, 10, 0.02)
        workers = workers_of(router.pid)
        router.send_signal(signal.SIGTERM)
        assert [f.result() for f in in_flight] == [" 0 1 2 3 4 5"] * 6
        assert router.wait(timeout=30) == 0
        assert len(workers) == 2
        assert wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in workers), 10, 0.1)


def test_a_session_sticks_to_one_replica_whichever_worker_takes_it(tmp_path: Path) -> None:
    """Rendezvous hashing of the session header is the same in every worker."""
    with CountingUpstream() as first, CountingUpstream() as second:
        port = free_port()
        options = ("--workers", "2", "--backend", f"m={second.url}")
        with router_process(port, first.url, tmp_path, *options):
            session = {"X-Session-ID": "conversation-7"}
            assert [complete(port, session) for _ in range(12)] == [200] * 12
        assert sorted([first.requests, second.requests]) == [0, 12]


def test_a_new_job_at_an_old_address_keeps_the_shared_answered_counter_counting() -> None:
    """The gauges the workers share (written without the multiprocess folder here, which
    changes where values live, not what is written): a replica's job replaced at its address
    starts again from 0 answered, which must neither fail the writer (a negative ``inc``) nor
    take the counter back."""
    pool = BackendPool(None, static=[("m", "http://127.0.0.1:9")])
    shared = SharedReplicaGauges(Admission(pool, make_policy("power-of-two")))
    pool.backends["http://127.0.0.1:9"].answered = 5
    shared.write()
    pool.backends["http://127.0.0.1:9"] = Backend("http://127.0.0.1:9", "m", job="2", answered=2)
    shared.write()
    [family] = shared.answered.collect()
    assert [s.value for s in family.samples if s.name.endswith("_total")] == [7]
