"""An elastic deployment on the local SLURM cluster, from zero and back: real llama.cpp replicas,
a controller job of its own, a router in this process, clients that count every failure.

One deployment lives through the whole story, because each step starts where the last ended:
at zero jobs it is still listed; its first (streamed) request waits, told what it waits for,
then gets its tokens; sustained load grows it to its maximum; lighter load shrinks it by
draining a replica while requests go on, and none of them fails; after ``idle_s`` it has no
job left; and a non-streamed request then either waits for the wake-up or, from a router told
to reject cold starts, gets a 503 with a Retry-After.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slurm_llm import Autoscale, Deployment, ModelSpec, deploy
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread
from tests.integration.helpers import cli, wait_until

pytestmark = pytest.mark.slurm
NAME = "elastic-smollm2"
MODEL = "smollm2"
BOUNDS = Autoscale(
    min_replicas=0, max_replicas=2, idle_s=15, target_utilisation=1.0, window_s=3,
    scale_down_after_s=5, drain_timeout_s=120,
)  # fmt: skip
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Count from 1 to 20."}],
        "max_tokens": 48}  # fmt: skip


def replica_jobs() -> list[str]:
    """The deployment's replica jobs SLURM runs or queues (not its controller's)."""
    out = subprocess.run(["squeue", "-h", "-r", "-n", f"slurm-llm-{NAME}", "-o", "%i"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return out.split()


def post(url: str, body: dict[str, Any], timeout: float = 120) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as refused:
        refused.read()
        return refused.code, dict(refused.headers)
    except urllib.error.URLError:  # no answer at all (the router has gone)
        return 0, {}


def models(router: RouterThread) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(f"{router.url}/v1/models", timeout=10) as response:
        return {entry["id"]: entry for entry in json.load(response)["data"]}


class Clients:
    """``count`` closed-loop clients, each sending chats until told to stop; every answer that
    is not a 200 is kept."""

    def __init__(self, router: RouterThread) -> None:
        self.url = f"{router.url}/v1/chat/completions"
        self.failures: list[int] = []
        self.answered = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, count: int) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(count)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=150)

    def _loop(self) -> None:
        while not self._stop.is_set():
            status, _ = post(self.url, CHAT)
            if status == 200:
                self.answered += 1
            else:
                self.failures.append(status)


@pytest.fixture(scope="module")
def elastic(local_slurm: object, slurm_llm_home: Path) -> Iterator[Deployment]:
    spec = ModelSpec.preset("smollm2-135m", max_concurrent_requests=2, autoscale=BOUNDS)
    with deploy(spec, replicas=0, executor="slurm", name=NAME, progress=False,
                controller="job") as deployment:  # fmt: skip
        yield deployment


def test_an_elastic_deployment_wakes_grows_drains_and_sleeps(
    elastic: Deployment, slurm_llm_home: Path
) -> None:
    config = RouterConfig(probes=ProbeConfig(interval_s=0))
    with RouterThread(home=slurm_llm_home, deployment=NAME, config=config) as router:
        wait_until(lambda: models(router).get(MODEL, {}).get("state") == "scaled to zero",
                   timeout=30, what="the model listed at zero replicas")  # fmt: skip
        assert replica_jobs() == []
        with urllib.request.urlopen(f"{router.url}/ready", timeout=10) as ready:
            assert json.load(ready)["models"] == [MODEL]  # a request to it is what wakes it

        comments, first_data = first_stream(router)
        assert comments[-1] == "ready" and len(comments) >= 2, comments
        waited_for = " / ".join(comments)
        assert "starting engine" in waited_for or "queued in SLURM" in waited_for, comments
        assert first_data.startswith("{")  # tokens came after the progress lines

        clients = Clients(router)
        try:
            clients.start(6)  # 6 requests at once, 2 slots a replica: it needs its maximum
            wait_until(lambda: ready_replicas(elastic) == 2, timeout=120,
                       what="growing to two ready replicas")  # fmt: skip
            clients.stop()
            clients.start(1)  # half a replica's slots: one of the two goes, drained first
            wait_until(lambda: any("drained in" in e or "drain timed out" in e
                                   for e in elastic.events),
                       timeout=90, what="a replica drained away")  # fmt: skip
            time.sleep(2)  # requests sent to the remaining replica after the drain, too
        finally:
            clients.stop()
        assert clients.failures == [] and clients.answered > 10
        assert not any("drain timed out" in event for event in elastic.events)
        wait_until(lambda: len(replica_jobs()) == 1, timeout=30, what="the drained job's end")

        wait_until(lambda: replica_jobs() == [], timeout=BOUNDS.idle_s + 60,
                   what="no replica job after idle_s")  # fmt: skip
        wait_until(lambda: models(router)[MODEL]["state"] == "scaled to zero", timeout=10,
                   what="the model listed at zero again")  # fmt: skip
        status = cli("status", NAME)
        assert "elastic, 0..2 replicas" in status and "-> 2:" in status and "-> 0:" in status

        reject = RouterConfig(probes=ProbeConfig(interval_s=0), cold_start="reject")
        with RouterThread(home=slurm_llm_home, deployment=NAME, config=reject) as impatient:
            wait_until(lambda: MODEL in models(impatient), timeout=10, what="the second router")
            code, headers = post(f"{impatient.url}/v1/chat/completions", CHAT)
            assert code == 503 and int(headers["Retry-After"]) >= 1, (code, headers)
        code, _ = post(f"{router.url}/v1/chat/completions", CHAT)  # waits for the wake-up
        assert code == 200, "\n".join(elastic.events[-10:])


def ready_replicas(deployment: Deployment) -> int:
    record = deployment.scaling()  # None before its controller's first pass
    return 0 if record is None else record.ready


def first_stream(router: RouterThread) -> tuple[list[str], str]:
    """The progress comments a streamed request got while its model woke, and its first data."""
    request = urllib.request.Request(
        f"{router.url}/v1/chat/completions", data=json.dumps({**CHAT, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    comments: list[str] = []
    with urllib.request.urlopen(request, timeout=180) as response:
        for raw in response:
            line = raw.decode().strip()
            if line.startswith(":"):
                comments.append(line.removeprefix(":").strip())
            elif line.startswith("data:"):
                first = line.removeprefix("data:").strip()
                response.read()  # the rest of the answer
                return comments, first
    raise AssertionError(f"the stream ended without data; comments: {comments}")
