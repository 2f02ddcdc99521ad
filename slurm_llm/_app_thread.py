"""An aiohttp application served from an event loop on a thread of its own.

For callers that are not async themselves - a notebook, a workflow script, a test with a
synchronous client - yet need a server in their own process: the router (``RouterThread``)
and the stand-in servers of the tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import traceback
from types import CoroutineType, TracebackType
from typing import Self

from aiohttp import web


class AppThread:
    """Serves ``app`` on ``host``:``port`` (0: one the OS picks) while the context is open;
    ``port`` and ``url`` are the real ones once it is entered."""

    stop_timeout_s = 30.0  # what leaving the context waits for the server's cleanup

    def __init__(
        self, app: web.Application, host: str = "127.0.0.1", port: int = 0, backlog: int = 128
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.url = ""
        self._backlog = backlog
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=self._backlog)
        await site.start()
        server = site._server  # the port the OS picked when port=0
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stopping = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        try:
            stopping.result(timeout=self.stop_timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"the server at {self.url} did not stop within {self.stop_timeout_s:g} s; "
                f"{self._what_runs()}"
            ) from None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def _what_runs(self) -> str:
        """Where the event loop's thread is and what its tasks wait on: what a stop that hangs
        is stuck in. Read from this thread while the loop runs on its own, for a report only."""
        frame = sys._current_frames().get(self._thread.ident or -1)
        where = "".join(traceback.format_stack(frame)[-6:]) if frame else "(not running)\n"
        tasks = "".join(f"  {awaiting(task)}\n" for task in asyncio.all_tasks(self._loop))
        return f"its loop's thread is at:\n{where}its tasks:\n{tasks or '  none'}"


def awaiting(task: asyncio.Task[object]) -> str:
    """The chain of coroutines a task is suspended in, outermost first (a task's own stack
    shows its outermost coroutine only)."""
    chain = []
    coroutine: object = task.get_coro()
    while isinstance(coroutine, CoroutineType) and (frame := coroutine.cr_frame) is not None:
        chain.append(f"{coroutine.__qualname__} ({frame.f_code.co_filename}:{frame.f_lineno})")
        coroutine = coroutine.cr_await
    return " -> ".join(chain) or repr(task)
