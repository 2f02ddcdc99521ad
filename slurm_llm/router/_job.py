"""The router as a job of its own, next to the replicas, instead of on a login node.

Login nodes often forbid long-running servers, and a router there dies with the user's
session. As a job, the router runs on a compute node, binds a leased port, and writes its
address to ``<home>/routers/<name>.json`` on the shared filesystem, where clients (and
``RouterJob.url``) find it, just as replicas publish theirs. It is ``Checkpointable``: when
SLURM preempts it or its wall-time ends, it is requeued and publishes its new address.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import TracebackType

import submitit
from pydantic import BaseModel, ValidationError

from slurm_llm._errors import DeploymentError
from slurm_llm._executors import (
    DEFAULT_TIME_LIMIT_MIN,
    detached_output,
    local_job_parameters,
    make_executor,
    resolve_kind,
    sbatch_parameters,
)
from slurm_llm._files import remove_durably, write_atomic
from slurm_llm._launcher import serving_host
from slurm_llm._paths import home_dir
from slurm_llm._ports import lease_port
from slurm_llm._spec import SlurmOptions
from slurm_llm.router._config import RouterConfig
from slurm_llm.router._server import serve


class RouterAddress(BaseModel):
    name: str
    url: str
    job_id: str
    node: str
    pid: int
    started: float


def address_path(name: str, home: Path | None = None) -> Path:
    return home_dir(home) / "routers" / f"{name}.json"


def read_address(name: str, home: Path | None = None) -> RouterAddress | None:
    try:
        return RouterAddress.model_validate_json(address_path(name, home).read_text())
    except (FileNotFoundError, ValidationError):
        return None


class RouterMain(submitit.helpers.Checkpointable):
    """What the job runs: publish the address, then serve until cancelled."""

    def __init__(self, name: str, home: str, deployment: str | None, config: RouterConfig) -> None:
        self.name = name
        self.home = home
        self.deployment = deployment
        self.config = config

    def __call__(self) -> None:
        host = serving_host()
        home = Path(self.home)
        with lease_port(host) as lease:
            address = RouterAddress(
                name=self.name,
                url=f"http://{host}:{lease.port}",
                job_id=submitit.JobEnvironment().job_id,
                node=socket.gethostname(),
                pid=os.getpid(),
                started=time.time(),
            )
            write_atomic(address_path(self.name, home), address.model_dump_json())
            try:
                serve(host, lease.port, home, self.deployment, self.config)
            finally:
                published = read_address(self.name, home)
                if published is not None and published.job_id == address.job_id:
                    remove_durably(address_path(self.name, home))


class RouterJob:
    """A submitted router; ``url`` waits until it serves."""

    def __init__(self, name: str, home: Path, job: submitit.Job[None]) -> None:
        self.name = name
        self.home = home
        self.job = job

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)

    def wait_url(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            address = read_address(self.name, self.home)
            if address is not None and address.job_id == self.job_id:
                return address.url
            if self.job.done():
                raise DeploymentError(
                    f"router job {self.job_id} ended before it served; its log:\n"
                    f"{(self.job.stdout() or '')[-2000:]}"
                )
            time.sleep(0.1)
        raise DeploymentError(
            f"router job {self.job_id} did not publish an address within {timeout:.0f} s; "
            f"is it still pending? (squeue -j {self.job_id})"
        )

    @property
    def url(self) -> str:
        return self.wait_url()

    def stop(self) -> None:
        self.job.cancel(check=False)
        deadline = time.monotonic() + 30
        while not self.job.done() and time.monotonic() < deadline:
            time.sleep(0.1)

    def __enter__(self) -> RouterJob:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def launch_router(
    deployment: str | None = None,
    *,
    name: str = "router",
    executor: str = "auto",
    config: RouterConfig | None = None,
    slurm: SlurmOptions | None = None,
    cpus: int = 2,
    mem_gb: int = 4,
    home: Path | None = None,
) -> RouterJob:
    """Submits the router as a job (SLURM when available, else a local process) and returns at
    once; ``RouterJob.url`` waits for its address."""
    kind = resolve_kind(executor)
    root = home_dir(home)
    folder = root / "routers" / "jobs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    options = slurm or SlurmOptions()
    time_min = options.time_limit_min or DEFAULT_TIME_LIMIT_MIN
    submitter = make_executor(kind, folder)
    if kind == "slurm":
        submitter.update_parameters(
            **sbatch_parameters(options, f"slurm-llm-router-{name}", time_min=time_min,
                                cpus=cpus, mem_gb=mem_gb)
        )  # fmt: skip
    else:
        submitter.update_parameters(**local_job_parameters(time_min))
    main = RouterMain(name, str(root), deployment, config or RouterConfig())
    with detached_output(folder / "controller.log"):
        job = submitter.submit(main)
    return RouterJob(name, root, job)
