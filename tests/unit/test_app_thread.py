"""``AppThread``: a server on a thread of its own, and what it says when it will not stop."""

from __future__ import annotations

import asyncio
import threading

import pytest
from aiohttp import web

from slurm_llm._app_thread import AppThread


def test_a_stop_that_hangs_says_what_the_server_was_doing() -> None:
    release = threading.Event()

    async def slow_cleanup(app: web.Application) -> None:
        while not release.is_set():  # a cleanup stuck on something that never comes
            await asyncio.sleep(0.01)

    app = web.Application()
    app.on_cleanup.append(slow_cleanup)
    server = AppThread(app)
    server.stop_timeout_s = 0.5
    try:
        with pytest.raises(TimeoutError, match=r"did not stop within 0.5 s") as stuck, server:
            pass
        assert "slow_cleanup" in str(stuck.value), "the task that hangs is named"
        assert "loop's thread is at" in str(stuck.value)
    finally:
        release.set()  # the cleanup ends; the loop's thread is a daemon and goes with the tests


def test_a_server_that_stops_in_time_leaves_nothing_running() -> None:
    server = AppThread(web.Application())
    with server:
        pass
    assert not server._thread.is_alive()
