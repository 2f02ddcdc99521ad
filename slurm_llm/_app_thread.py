"""An aiohttp application served from an event loop on a thread of its own.

For callers that are not async themselves - a notebook, a workflow script, a test with a
synchronous client - yet need a server in their own process: the router (``RouterThread``)
and the stand-in servers of the tests.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Self

from aiohttp import web


class AppThread:
    """Serves ``app`` on ``host``:``port`` (0: one the OS picks) while the context is open;
    ``port`` and ``url`` are the real ones once it is entered."""

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
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
