"""What every handler of one router shares."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from slurm_llm.router._admission import Admission
from slurm_llm.router._backends import BackendPool
from slurm_llm.router._config import RouterConfig
from slurm_llm.router._dispatch import Dispatcher
from slurm_llm.router._metrics import RouterMetrics
from slurm_llm.router._policies import make_policy


@dataclass
class RouterState:
    config: RouterConfig
    pool: BackendPool
    admission: Admission = field(init=False)
    metrics: RouterMetrics = field(init=False)
    dispatcher: Dispatcher = field(init=False)  # set at start-up: it needs the event loop

    def __post_init__(self) -> None:
        self.admission = Admission(
            self.pool,
            make_policy(self.config.policy),
            self.config.max_queue,
            self.config.queue_timeout_s,
        )
        self.metrics = RouterMetrics(self.admission)


STATE: web.AppKey[RouterState] = web.AppKey("state", RouterState)
MODEL: web.RequestKey[str] = web.RequestKey("model", str)  # the model a request is counted under
