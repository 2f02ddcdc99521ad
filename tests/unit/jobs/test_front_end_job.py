"""A front-end job publishes its address only once it serves, and never after it stopped;
stopping it returns once its address is withdrawn.

nginx as a job installs itself on first use and then starts: an address written before that
sent clients to a port nobody listened on. The front end here is a stand-in (an aiohttp app
named as such) that listens only when the test lets it, and answers ``/health`` 503 until it
is told it is ready, as a server still starting would.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

from slurm_llm._app_thread import AppThread
from slurm_llm._files import write_atomic
from slurm_llm._polling import polling
from slurm_llm.jobs._front_end_job import (
    FrontEndAddress,
    FrontEndJob,
    FrontEndMain,
    address_path,
    answers_health,
    read_address,
)
from tests.integration.helpers import wait_until

JOB_ID = "4242"


class StandInFrontEnd(FrontEndMain):
    """A stand-in front end (not the router, not nginx): ``serve`` listens once ``listen`` is
    set, answers ``/health`` 200 once ``ready`` is set (503 before), until ``stop``."""

    kind = "stand-in"

    def __init__(self, home: Path, fail: bool = False) -> None:
        super().__init__("stand-in", str(home), None)
        self.fail = fail
        self.entered = threading.Event()
        self.listen = threading.Event()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.health_requests = 0
        self.published_before_serving = False

    def serve(self, host: str, port: int, home: Path) -> None:
        self.published_before_serving = read_address(self.name, home) is not None
        self.entered.set()
        if self.fail:
            raise RuntimeError("the server could not be installed")
        assert self.listen.wait(timeout=30)
        app = web.Application()
        app.router.add_get("/health", self.health)
        with AppThread(app, host, port):
            assert self.stop.wait(timeout=30)

    async def health(self, request: web.Request) -> web.Response:
        self.health_requests += 1
        return web.json_response({}, status=200 if self.ready.is_set() else 503)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment submitit's local executor gives a job, and a state directory."""
    monkeypatch.setenv("SLURM_LLM_HOME", str(tmp_path))
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", JOB_ID)
    monkeypatch.delenv("SLURM_LLM_HOST", raising=False)
    return tmp_path


@pytest.fixture
def running(home: Path) -> Iterator[tuple[StandInFrontEnd, threading.Thread]]:
    main = StandInFrontEnd(home)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            main()
        except BaseException as error:  # the test asserts on it
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield main, thread
    main.listen.set()
    main.stop.set()
    thread.join(timeout=30)
    assert not errors


def test_the_address_is_published_only_once_the_front_end_answers(
    running: tuple[StandInFrontEnd, threading.Thread], home: Path
) -> None:
    main, thread = running
    assert main.entered.wait(timeout=10)
    assert not main.published_before_serving
    # Nobody listens yet (nginx being installed): for a while, no address.
    for _ in polling(0.3, every=0.01):
        assert read_address("stand-in", home) is None

    main.listen.set()  # it listens, but /health answers 503: still starting
    wait_until(lambda: main.health_requests >= 3, what="three health checks", every=0.01)
    assert read_address("stand-in", home) is None

    main.ready.set()
    wait_until(lambda: read_address("stand-in", home) is not None, what="the address", every=0.01)
    address = read_address("stand-in", home)
    assert address is not None
    assert (address.kind, address.job_id) == ("stand-in", JOB_ID)
    with urllib.request.urlopen(f"{address.url}/health", timeout=5) as answer:
        assert answer.status == 200

    main.stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert read_address("stand-in", home) is None, "a stopped front end withdraws its address"


def test_a_front_end_that_fails_before_it_listens_never_publishes(home: Path) -> None:
    main = StandInFrontEnd(home, fail=True)
    with pytest.raises(RuntimeError, match="could not be installed"):
        main()
    assert not main.published_before_serving
    assert not (home / "routers" / "stand-in.json").exists()


def test_nothing_listening_is_not_serving() -> None:
    with AppThread(web.Application()) as server:
        port = server.port
    assert not answers_health("127.0.0.1", port, timeout=0.5)


class CancelledAtOnce:
    """A fake submitit job (no scheduler behind it) that, like a SLURM job, counts as done as
    soon as it is cancelled, whatever its processes are still doing."""

    job_id = JOB_ID

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self, check: bool = True) -> None:
        self.cancelled = True

    def done(self) -> bool:
        return self.cancelled


def published(home: Path, job_id: str = JOB_ID) -> None:
    address = FrontEndAddress(kind="stand-in", name="stand-in", url="http://127.0.0.1:1",
                              job_id=job_id, node="here", pid=1, started=0.0)  # fmt: skip
    write_atomic(address_path("stand-in", home), address.model_dump_json())


def job_of(home: Path) -> FrontEndJob:
    return FrontEndJob("stand-in", home, cast(Any, CancelledAtOnce()))


def test_stopping_returns_once_the_front_end_has_withdrawn_its_address(home: Path) -> None:
    """SLURM says a cancelled job is done before its front end has shut down and removed its
    address; ``stop`` waits for the removal, so nobody reads the address of a stopped job."""
    published(home)
    shutting_down = threading.Timer(0.3, lambda: address_path("stand-in", home).unlink())
    shutting_down.start()
    began = time.monotonic()
    job_of(home).stop()
    assert time.monotonic() - began >= 0.25  # it waited for the front end
    assert read_address("stand-in", home) is None
    shutting_down.join()


def test_an_address_a_killed_front_end_left_is_removed_by_stop(home: Path) -> None:
    published(home)
    job_of(home).stop(timeout=0.2)
    assert read_address("stand-in", home) is None


def test_stop_leaves_the_address_of_a_newer_job_of_the_same_name(home: Path) -> None:
    published(home, job_id="4243")
    job_of(home).stop(timeout=0.2)
    address = read_address("stand-in", home)
    assert address is not None and address.job_id == "4243"
