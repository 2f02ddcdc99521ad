"""The router as a job of its own (``launch_router``, ``slurm-llm router --submit``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from slurm_llm._paths import home_dir
from slurm_llm.jobs._front_end_job import FrontEndJob, FrontEndMain, submit_front_end
from slurm_llm.router._config import RouterConfig
from slurm_llm.router._server import serve
from slurm_llm.spec._model_spec import SlurmOptions


class RouterMain(FrontEndMain):
    kind = "router"

    def __init__(self, name: str, home: str, deployment: str | None, config: RouterConfig) -> None:
        super().__init__(name, home, deployment)
        self.config = config

    def serve(self, host: str, port: int, home: Path) -> None:
        serve(host, port, home, self.deployment, self.config)


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
) -> FrontEndJob:
    """Submits the router as a job; ``.url`` waits for its address under ``<home>/routers``.
    It runs one worker per CPU (``cpus``), unless ``config.workers`` says how many."""
    config = config or RouterConfig(workers=0)
    if config.workers == 0:
        config = replace(config, workers=cpus)
    main = RouterMain(name, str(home_dir(home)), deployment, config)
    return submit_front_end(main, executor=executor, slurm=slurm, cpus=cpus, mem_gb=mem_gb)
