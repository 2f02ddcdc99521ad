"""Running the router: in the foreground (``slurm-llm router``) or in a background thread of
the caller's process (``RouterThread``, for notebooks, workflows and tests)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import signal
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Self

from aiohttp import web

from slurm_llm._app_thread import AppThread
from slurm_llm._paths import registry_dir
from slurm_llm._registry import Registry
from slurm_llm.router._admission import ModelLoad
from slurm_llm.router._app import build_app
from slurm_llm.router._backends import BackendPool
from slurm_llm.router._config import RouterConfig, RouterSite
from slurm_llm.router._state import STATE
from slurm_llm.router._workers import RouterProcesses, serve_workers

# Connections the kernel holds before accept(); aiohttp's default of 128 dropped SYNs at a few
# thousand clients connecting at once.
BACKLOG = 4096
# Allocations between two collections of the youngest generation (Python's default: 700).
# Under load the default collected about 90 times a second, each time walking the objects of
# the requests in flight, which are alive and so survive: work that found nothing to free.
YOUNG_COLLECTION_EVERY = 50_000


def make_pool(
    home: Path | None,
    deployment: str | None,
    static: Sequence[tuple[str, str]],
    config: RouterConfig,
) -> BackendPool:
    """The registry's replicas (or one deployment's) plus fixed ones; only the fixed ones when
    ``static`` is given and ``deployment`` is not."""
    registry = None if static and deployment is None else Registry(registry_dir(home))
    return BackendPool(registry, deployment, static, config.replica_limit,
                       share=(config.worker, config.workers))  # fmt: skip


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    home: Path | None = None,
    deployment: str | None = None,
    config: RouterConfig | None = None,
    static: Sequence[tuple[str, str]] = (),
    on_serving: Callable[[], None] | None = None,
    reuse_port: bool = False,
) -> None:
    """Blocks, serving every model in the registry (or one deployment's) until SIGTERM or
    SIGINT, then drains: it stops listening at once, finishes the requests and streams it has
    (for up to ``config.drain_s``), and exits.

    ``static`` adds (model, url) pairs for servers started by other means. ``on_serving`` is
    called once the router listens, so that whatever it announces can be reached.
    ``reuse_port`` lets a new router listen on the port of one still running, so a restart
    refuses no connection: start the new one, then stop the old one, which drains.

    With ``config.workers`` above 1, that many router processes serve the port (``_workers``)."""
    config = config or RouterConfig()
    config = replace(config, workers=max(config.workers, 1))  # 0 (one per CPU) means 1 here
    site = RouterSite(host, port, home, deployment, config, tuple(static))
    if config.workers > 1:
        serve_workers(site, on_serving)
    else:
        serve_process(site, on_serving, reuse_port)


def serve_process(
    site: RouterSite, on_serving: Callable[[], None] | None, reuse_port: bool
) -> None:
    """``serve`` in this process: one router, one event loop."""
    config = site.config
    app = build_app(make_pool(site.home, site.deployment, site.static, config), config, site.home)
    raise_open_files_limit()
    loop = new_event_loop()
    try:
        loop.run_until_complete(run_until_signalled(app, site.host, site.port, config, on_serving,
                                                    reuse_port))  # fmt: skip
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


async def run_until_signalled(
    app: web.Application,
    host: str,
    port: int,
    config: RouterConfig,
    on_serving: Callable[[], None] | None,
    reuse_port: bool,
) -> None:
    """aiohttp's ``run_app`` cancels the requests in flight at SIGTERM (its cleanup runs in a
    cancelled task); this waits for them, which is what lets a router be restarted, or a router
    job be preempted, without cutting a stream."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.drain_s)
    await runner.setup()
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, stop_or_exit, stop)
        site = web.TCPSite(runner, host, port, backlog=BACKLOG, reuse_port=reuse_port or None)
        await site.start()
        settle_heap()
        if on_serving is not None:
            on_serving()
        await stop.wait()
    finally:
        await runner.cleanup()


def stop_or_exit(stop: asyncio.Event) -> None:
    """The first signal drains; a second one (an impatient Ctrl-C) exits at once."""
    if stop.is_set():
        os._exit(130)
    stop.set()


def settle_heap() -> None:
    """The cyclic garbage collector told to leave alone what start-up made, and to run less
    often: it cost the router about a tenth of its time per request (``docs/measured``).

    Start-up leaves some 120,000 objects (modules, pydantic's schemas, the app), and each full
    collection walked them all, about 90 ms every few seconds under load: ``gc.freeze`` takes
    them out of its sight (they live as long as the process anyway). Requests make little
    cyclic garbage, reference counting frees the rest at once, so collecting the youngest
    generation every ``YOUNG_COLLECTION_EVERY`` allocations holds a few MiB more at most. Only
    for a router process of its own: ``RouterThread`` leaves its host process's collector as
    it is."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, old)


def raise_open_files_limit() -> None:
    """Two sockets per request in flight (client and replica): the common soft limit of 1024
    open files would refuse connections at a few hundred concurrent users."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed: it roughly halves the router's cost per request."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class RouterThread(AppThread):
    """The router on an event loop of its own thread; ``url`` once the context is entered.

    With ``config.workers`` above 1 it runs that many router processes instead
    (``RouterProcesses``): ``url`` and ``load`` work as ever, but the router's state is in those
    processes, so ``pool`` and ``app`` are not there to look at."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        home: Path | None = None,
        deployment: str | None = None,
        config: RouterConfig | None = None,
        static: Sequence[tuple[str, str]] = (),
    ) -> None:
        config = config or RouterConfig()
        self.processes: RouterProcesses | None = None
        if config.workers > 1:
            site = RouterSite(host, port, home, deployment, config, tuple(static))
            self.processes = RouterProcesses(site)
            self.host, self.port, self.url = host, port, ""
            return
        self._pool = make_pool(home, deployment, static, config)
        super().__init__(build_app(self._pool, config, home), host, port, backlog=BACKLOG)

    @property
    def pool(self) -> BackendPool:
        """The replicas as this router sees them (one process only)."""
        if self.processes is not None:
            raise RuntimeError("a router of several workers keeps its replicas in its workers")
        return self._pool

    def __enter__(self) -> Self:
        if self.processes is None:
            return super().__enter__()
        self.processes.__enter__()
        self.port, self.url = self.processes.site.port, self.processes.url
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.processes is None:
            super().__exit__(exc_type, exc, tb)
        else:
            self.processes.__exit__(exc_type, exc, tb)

    def load(self, model: str) -> ModelLoad:
        """How busy ``model`` is right now (in-flight, capacity, queue)."""
        if self.processes is not None:
            return self.processes.load(model)
        return self.app[STATE].admission.load(model)
