"""A front end (the router, or nginx) as a job of its own, next to the replicas.

Login nodes often forbid long-running servers, and a front end there dies with the user's
session. As a job, it runs on a compute node, binds a leased port, and writes its address to
``<home>/routers/<name>.json`` on the shared filesystem, where clients (and
``FrontEndJob.url``) find it, just as replicas publish theirs. The address is written only once
the front end answers on it: nginx may first be installed on first use and started, and an
address published before that refuses connections. It is ``Checkpointable``: when SLURM
preempts it or its wall-time ends, it is requeued and publishes its new address.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import submitit
from pydantic import BaseModel, ValidationError

from slurm_llm._errors import DeploymentError
from slurm_llm._files import remove_durably, write_atomic
from slurm_llm._paths import home_dir
from slurm_llm._polling import polling, wait_until
from slurm_llm.jobs._executors import (
    detached_output,
    local_job_parameters,
    make_executor,
    resolve_kind,
    sbatch_parameters,
)
from slurm_llm.node._launcher import serving_host
from slurm_llm.node._ports import lease_port
from slurm_llm.spec._model_spec import DEFAULT_TIME_LIMIT_MIN, SlurmOptions

# SLURM's default KillWait: how long a cancelled job's processes have between SIGTERM and SIGKILL.
KILL_WAIT_S = 30.0


class FrontEndAddress(BaseModel):
    kind: str  # router or nginx
    name: str
    url: str
    job_id: str
    node: str
    pid: int
    started: float


def address_path(name: str, home: Path | None = None) -> Path:
    return home_dir(home) / "routers" / f"{name}.json"


def read_address(name: str, home: Path | None = None) -> FrontEndAddress | None:
    try:
        return FrontEndAddress.model_validate_json(address_path(name, home).read_text())
    except (FileNotFoundError, ValidationError):
        return None


def published_by(name: str, home: Path, job_id: str) -> FrontEndAddress | None:
    """The address under ``name`` if job ``job_id`` wrote it (a later job of the same name may
    have replaced it)."""
    address = read_address(name, home)
    return address if address is not None and address.job_id == job_id else None


def withdraw(name: str, home: Path, job_id: str) -> None:
    """Removes the address under ``name`` if it is job ``job_id``'s."""
    if published_by(name, home, job_id) is not None:
        remove_durably(address_path(name, home))


def answers_health(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether ``GET /health`` on ``host:port`` answers 200 (the router's and our nginx
    configuration's both do). http.client rather than urllib: a site's ``http_proxy`` must not
    stand between a job and its own port."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


class Publisher:
    """Writes a front end's address once it answers ``/health``, from a thread of its own.

    ``serve`` blocks (and must keep the main thread, for its signal handlers), and what it does
    before it listens - installing nginx on first use, starting it - can take a minute; an
    address written before it serves would send clients to a port nobody listens on. After
    ``stop()`` returns, the address is never written.
    """

    def __init__(
        self, address: FrontEndAddress, path: Path, host: str, port: int, interval: float = 0.05
    ) -> None:
        self.address = address
        self.path = path
        self.host = host
        self.port = port
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publish-address", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            if answers_health(self.host, self.port) and not self._stopped.is_set():
                write_atomic(self.path, self.address.model_dump_json())
                return
            self._stopped.wait(self.interval)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


class FrontEndMain(submitit.helpers.Checkpointable):
    """What the job runs: ``serve`` until cancelled, publishing the address once it serves."""

    kind = "front end"

    def __init__(self, name: str, home: str, deployment: str | None) -> None:
        self.name = name
        self.home = home
        self.deployment = deployment

    def serve(self, host: str, port: int, home: Path) -> None:
        raise NotImplementedError

    def __call__(self) -> None:
        host = serving_host()
        home = Path(self.home)
        with lease_port(host) as lease:
            address = FrontEndAddress(
                kind=self.kind,
                name=self.name,
                url=f"http://{host}:{lease.port}",
                job_id=submitit.JobEnvironment().job_id,
                node=socket.gethostname(),
                pid=os.getpid(),
                started=time.time(),
            )
            publisher = Publisher(address, address_path(self.name, home), host, lease.port)
            publisher.start()
            try:
                self.serve(host, lease.port, home)
            finally:
                publisher.stop()
                withdraw(self.name, home, address.job_id)


class FrontEndJob:
    """A submitted front end; ``url`` waits until it serves."""

    def __init__(self, name: str, home: Path, job: submitit.Job[None]) -> None:
        self.name = name
        self.home = home
        self.job = job

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)

    def wait_url(self, timeout: float = 120.0) -> str:
        """The front end's URL, once it serves: the job writes its address only after the front
        end has answered on it (nginx is first installed on first use, then started), so the
        URL returned takes requests at once."""
        for _ in polling(timeout, every=0.1):
            address = published_by(self.name, self.home, self.job_id)
            if address is not None:
                return address.url
            if self.job.done():
                raise DeploymentError(
                    f"front-end job {self.job_id} ended before it served; its log:\n"
                    f"{(self.job.stdout() or '')[-2000:]}"
                )
        raise DeploymentError(
            f"front-end job {self.job_id} did not serve within {timeout:.0f} s: it may still be "
            f"pending (squeue -j {self.job_id}), or installing or starting its server; "
            f"its log: {self.job.paths.stdout}"
        )

    @property
    def url(self) -> str:
        return self.wait_url()

    def stop(self, timeout: float = KILL_WAIT_S) -> None:
        """Cancels the job; returns once it has ended and withdrawn its address. SLURM counts a
        cancelled job done at once, while its front end is still shutting down and has yet to
        remove its address: a client reading it then was sent to a front end that had gone.
        One that has not withdrawn it within ``timeout`` (SLURM's KillWait: by then it was
        killed, and never will) has it removed here."""
        self.job.cancel(check=False)
        if not wait_until(self.job.done, timeout, every=0.1):
            return

        def withdrawn() -> bool:
            return published_by(self.name, self.home, self.job_id) is None

        if not wait_until(withdrawn, timeout, every=0.1):
            withdraw(self.name, self.home, self.job_id)

    def __enter__(self) -> FrontEndJob:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def submit_front_end(
    main: FrontEndMain,
    *,
    executor: str = "auto",
    slurm: SlurmOptions | None = None,
    cpus: int = 2,
    mem_gb: int = 4,
) -> FrontEndJob:
    """Submits ``main`` (SLURM when available, else a local process) and returns at once;
    ``FrontEndJob.url`` waits for its address."""
    kind = resolve_kind(executor)
    root = Path(main.home)
    folder = root / "routers" / "jobs" / f"{main.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    options = slurm or SlurmOptions()
    time_min = options.time_limit_min or DEFAULT_TIME_LIMIT_MIN
    submitter = make_executor(kind, folder)
    if kind == "slurm":
        job_name = f"slurm-llm-{main.kind}-{main.name}"
        submitter.update_parameters(
            **sbatch_parameters(options, job_name, time_min=time_min, cpus=cpus, mem_gb=mem_gb)
        )
    else:
        submitter.update_parameters(**local_job_parameters(time_min))
    with detached_output(folder / "controller.log"):
        job = submitter.submit(main)
    return FrontEndJob(main.name, root, job)


def add_submit_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    """The ``--submit`` options ``slurm-llm router`` and ``slurm-llm nginx run`` share."""
    job = parser.add_argument_group("as a job of its own (--submit)")
    job.add_argument("--submit", action="store_true", help=f"run {kind} as a job; print its URL")
    job.add_argument("--name", default=kind, help="its address goes to <home>/routers/NAME.json")
    job.add_argument("--executor", choices=("auto", "slurm", "local"), default="auto")
    job.add_argument("--partition", default=None)
    job.add_argument("--account", default=None)
    job.add_argument("--time-limit", default=None, help="SLURM time syntax, e.g. 24:00:00")


def submitted_options(args: argparse.Namespace) -> dict[str, Any]:
    """``add_submit_arguments``' values, as keyword arguments of ``launch_router/nginx``."""
    slurm = SlurmOptions(partition=args.partition, account=args.account, time_limit=args.time_limit)
    return {"name": args.name, "executor": args.executor, "slurm": slurm}


def announce(job: FrontEndJob, clients_use: str) -> str:
    """What the CLI prints once a submitted front end serves (it waits for that)."""
    return (
        f"{job.name} (job {job.job_id}) serves: clients use "
        f"{clients_use.format(url=job.wait_url())}. "
        f"Its address is also in {address_path(job.name, job.home)}. "
        f"Stop it with: scancel {job.job_id} (or kill it, if local)"
    )
