"""nginx as a job of its own next to the replicas (``launch_nginx``, ``slurm-llm nginx run
--submit``), following the registry like ``slurm-llm nginx run`` does.

Its prefix (configuration, logs) is ``<home>/nginx/<name>`` on the shared filesystem, so its
access log can be read from the login node.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from pathlib import Path

from slurm_llm._paths import home_dir
from slurm_llm.jobs._front_end_job import FrontEndJob, FrontEndMain, submit_front_end
from slurm_llm.nginx._config import Balancing, NginxConfig
from slurm_llm.nginx._follow import follow_registry, registry_upstreams
from slurm_llm.nginx._server import NginxServer
from slurm_llm.spec._model_spec import SlurmOptions


class NginxMain(FrontEndMain):
    kind = "nginx"

    def __init__(
        self,
        name: str,
        home: str,
        deployment: str | None,
        balancing: Balancing,
        api_keys: Sequence[str],
        workers: int,
    ) -> None:
        super().__init__(name, home, deployment)
        self.balancing = balancing
        self.api_keys = list(api_keys)
        self.workers = workers

    def serve(self, host: str, port: int, home: Path) -> None:
        config = NginxConfig(
            registry_upstreams(home, self.deployment), home / "nginx" / self.name, host=host,
            port=port, balancing=self.balancing, api_keys=self.api_keys,
            worker_processes=self.workers,
        )  # fmt: skip
        stop = threading.Event()
        # scancel sends SIGTERM: stop nginx and withdraw the address before SLURM's SIGKILL.
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: stop.set())
        with NginxServer(config) as server:
            follow_registry(server, home, self.deployment, stop=stop)


def launch_nginx(
    deployment: str | None = None,
    *,
    name: str = "nginx",
    executor: str = "auto",
    balancing: Balancing = "least_conn",
    api_keys: Sequence[str] = (),
    slurm: SlurmOptions | None = None,
    cpus: int = 2,
    mem_gb: int = 2,
    home: Path | None = None,
) -> FrontEndJob:
    """Submits nginx as a job, one worker per CPU; ``.url`` waits for its address under
    ``<home>/routers``. Clients reach each model at ``<url>/<model>/v1``."""
    main = NginxMain(name, str(home_dir(home)), deployment, balancing, api_keys, cpus)
    return submit_front_end(main, executor=executor, slurm=slurm, cpus=cpus, mem_gb=mem_gb)
