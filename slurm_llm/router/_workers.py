"""Several router processes on one port: ``slurm-llm router --workers N``.

One Python process uses one core. A site that gives the router more runs N workers, each a
whole router (its own event loop, replicas, queue and probes) listening on the same port with
``SO_REUSEPORT``: the kernel spreads new connections over them. A supervisor (this module, the
process that was started) starts them, restarts one that dies, and at SIGTERM has each drain.

What admission means across workers: each replica's slots are split among the workers (worker
``i`` of ``N`` gets ``slots // N``, plus one for the first ``slots % N``, and at least one), and
so is the queue bound. So the replica still gets at most its slots at once (or ``N``, when it
has fewer slots than there are workers), without a lock or shared memory on the hot path. The
price is that a worker may queue a request while another has a free slot of the same replica:
with ``SO_REUSEPORT`` the connections, and so the load, are spread evenly on average, not at
every instant, so the queue wait's tail grows where slots are few per worker. Sites with many
slots per replica (vLLM's 256) see no difference; the measured effect is in the router guide.
Per-minute key limits are per worker too (a key gets up to N times them); daily and monthly
quotas count every worker's use: each worker its own in memory, the others' from their usage
records, read on every 2 s in the background (``Limiter.keep_reading``), so within seconds.

Metrics are the workers' summed: counters and histograms through prometheus-client's
multiprocess mode (a folder of memory-mapped files the supervisor makes and removes), and the
per-replica gauges written there by each worker once a second. Each worker hands its requests'
tallies to those files once a second too (``RouterMetrics.fold``), at once when it answers a
scrape, and as it stops; a worker that is killed loses up to its last second of counts.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from slurm_llm.node._ports import PortLease, lease_port
from slurm_llm.router._admission import ModelLoad
from slurm_llm.router._config import RouterSite

log = logging.getLogger("slurm_llm.router")

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
RESTART_BACKOFF_S = 1.0  # a worker that dies at once is not restarted in a tight loop


def run_worker(worker: int, site: RouterSite, ready: Any) -> None:
    """One worker's life: a whole router on the shared port; tells ``ready`` once it listens.
    It has a process group of its own, so a Ctrl-C reaches the supervisor only (which has each
    worker drain once), and it drains by itself if the supervisor is gone (killed)."""
    from slurm_llm.router._server import serve_process  # noqa: PLC0415 (a cycle otherwise)

    os.setpgrp()
    supervisor = os.getppid()
    threading.Thread(target=stop_when_orphaned, args=(supervisor,), daemon=True).start()
    mine = replace(site, config=replace(site.config, worker=worker))
    serve_process(mine, on_serving=lambda: ready.put(worker), reuse_port=True)


def stop_when_orphaned(supervisor: int) -> None:
    """SIGTERM to this worker (it drains) once its supervisor has died: no worker outlives
    it, holding the port."""
    while os.getppid() == supervisor:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def serve_workers(site: RouterSite, on_serving: Callable[[], None] | None = None) -> None:
    """Blocks, running ``site.config.workers`` routers on its port until SIGTERM or SIGINT;
    then each drains (as one router does) and this returns. ``on_serving`` is called once every
    worker listens."""
    metrics_dir = Path(tempfile.mkdtemp(prefix="slurm-llm-router-metrics-"))
    previous = os.environ.get(METRICS_DIR_VARIABLE)
    os.environ[METRICS_DIR_VARIABLE] = str(metrics_dir)  # the workers inherit it
    context = multiprocessing.get_context("spawn")  # no thread or loop of this one is copied
    ready = context.Queue()
    stopping = False

    def start(worker: int) -> BaseProcess:
        process = context.Process(
            target=run_worker,
            args=(worker, site, ready),
            name=f"slurm-llm-router-worker-{worker}",
        )
        process.start()
        return process

    def stop(number: int, frame: object) -> None:
        nonlocal stopping
        if stopping:  # a second Ctrl-C: at once
            for process in processes.values():
                if process.pid is not None:
                    os.kill(process.pid, signal.SIGKILL)
            os._exit(130)
        stopping = True
        for process in processes.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    processes: dict[int, BaseProcess] = {}
    old_handlers = {n: signal.signal(n, stop) for n in (signal.SIGTERM, signal.SIGINT)}
    try:
        processes.update({worker: start(worker) for worker in range(site.config.workers)})
        waiting = set(processes)
        while waiting and not stopping:
            worker_ready(ready, waiting, processes)
        if on_serving is not None and not stopping:
            on_serving()
        supervise(processes, start, lambda: stopping)
    finally:
        for number, handler in old_handlers.items():
            signal.signal(number, handler)
        if previous is None:
            os.environ.pop(METRICS_DIR_VARIABLE, None)
        else:
            os.environ[METRICS_DIR_VARIABLE] = previous
        shutil.rmtree(metrics_dir, ignore_errors=True)


def worker_ready(ready: Any, waiting: set[int], processes: dict[int, BaseProcess]) -> None:
    """Waits a little for a worker to say it listens; fails if one exits first."""
    try:
        waiting.discard(ready.get(timeout=0.2))
    except queue.Empty:  # none yet
        for worker in waiting:
            if processes[worker].exitcode is not None:
                raise RuntimeError(
                    f"router worker {worker} exited with {processes[worker].exitcode} before "
                    "it listened; its log says why"
                ) from None


def supervise(
    processes: dict[int, BaseProcess],
    start: Callable[[int], BaseProcess],
    stopping: Callable[[], bool],
) -> None:
    """Until every worker has ended after a stop: a worker that dies otherwise is started
    again (its share of the slots would be lost with it)."""
    from prometheus_client import multiprocess  # noqa: PLC0415 (reads the variable at import)

    while processes:
        sentinels = {process.sentinel: worker for worker, process in processes.items()}
        for sentinel in multiprocessing.connection.wait(list(sentinels), timeout=1.0):
            worker = sentinels[sentinel]  # type: ignore[index]
            process = processes.pop(worker)
            process.join()
            if process.pid is not None:
                multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
            if not stopping():
                log.error("router worker %d exited with %s; starting it again", worker,
                          process.exitcode)  # fmt: skip
                time.sleep(RESTART_BACKOFF_S)
                processes[worker] = start(worker)


def run_supervisor(site: RouterSite, serving: Any) -> None:
    """``serve_workers`` in a process of its own (``RouterProcesses``); sets ``serving`` once
    every worker listens."""
    serve_workers(site, on_serving=serving.set)


class RouterProcesses:
    """``config.workers`` routers on one port, started from a process that goes on with other
    work (a notebook, a workflow, a test), as ``RouterThread`` runs one: the supervisor runs in
    a child process, which the context stops (draining the workers) on the way out."""

    def __init__(self, site: RouterSite) -> None:
        self.site = site
        self.url = ""
        self._lease: PortLease | None = None
        self._process: BaseProcess | None = None

    def __enter__(self) -> RouterProcesses:
        if not self.site.port:  # the workers must agree on a port: leased, held while they run
            self._lease = lease_port(self.site.host)
            self.site = replace(self.site, port=self._lease.port)
        context = multiprocessing.get_context("spawn")
        serving = context.Event()
        self._process = context.Process(
            target=run_supervisor,
            args=(self.site, serving),
            name="slurm-llm-router-supervisor",
        )
        self._process.start()
        while not serving.wait(0.1):
            if self._process.exitcode is not None:
                self._release()
                raise RuntimeError(
                    f"the router's workers exited with {self._process.exitcode} before they "
                    "listened; their output says why"
                )
        self.url = f"http://{self.site.host}:{self.site.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        process = self._process
        if process is not None and process.pid is not None and process.exitcode is None:
            os.kill(process.pid, signal.SIGTERM)  # each worker drains, then the supervisor ends
            process.join(self.site.config.drain_s + 15)
            if process.exitcode is None:
                process.kill()
                process.join()
        self._release()

    def _release(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def load(self, model: str) -> ModelLoad:
        """How busy ``model`` is, as ``/v1/load`` says: the view of the worker that answers."""
        with urllib.request.urlopen(f"{self.url}/v1/load", timeout=10) as answer:
            loads = json.loads(answer.read())["models"]
        for load in loads:
            if load["model"] == model:
                load.pop("utilisation", None)
                return ModelLoad(**load)
        raise KeyError(f"{model!r} is not served")
