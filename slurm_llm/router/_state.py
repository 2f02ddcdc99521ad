"""What every handler of one router shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from slurm_llm._usage import TokensUsedSince, UsageLog, usage_dir
from slurm_llm.batches._batch_store import BatchStore
from slurm_llm.batches._file_store import FileStore
from slurm_llm.router._admission import Admission
from slurm_llm.router._auth import Callers
from slurm_llm.router._backends import BackendPool, slot_share
from slurm_llm.router._config import RouterConfig
from slurm_llm.router._dispatch import Dispatcher
from slurm_llm.router._elastic import ElasticLink
from slurm_llm.router._limits import Limiter
from slurm_llm.router._metrics import RouterMetrics
from slurm_llm.router._policies import make_policy
from slurm_llm.tribunal._log import default_log_path


@dataclass
class RouterState:
    config: RouterConfig
    pool: BackendPool
    home: Path | None = None  # where files, batches and usage records live (default: ~/.slurm-llm)
    admission: Admission = field(init=False)
    metrics: RouterMetrics = field(init=False)
    dispatcher: Dispatcher = field(init=False)  # set at start-up: it needs the event loop
    callers: Callers = field(init=False)
    limiter: Limiter = field(init=False)
    usage: UsageLog | None = None  # opened at start-up, closed (flushed) at shutdown
    files: FileStore = field(init=False)
    batches: BatchStore = field(init=False)
    elastic: ElasticLink = field(init=False)

    def __post_init__(self) -> None:
        self.admission = Admission(
            self.pool,
            make_policy(self.config.policy),
            slot_share(self.config.max_queue, self.config.worker, self.config.workers),
            self.config.queue_timeout_s,
            self.config.batch_aging_s,
            interactive_reserve=self.config.interactive_reserve,
            wake_timeout_s=self.config.wake_timeout_s,
        )
        self.metrics = RouterMetrics(self.admission)
        self.elastic = ElasticLink(self.pool, self.admission, self.metrics, self.home)
        self.callers = Callers(self.config.api_keys, self.config.keys_file)
        self.limiter = Limiter(TokensUsedSince(self.usage_dir, self.own_usage_file))
        self.files = FileStore(self.home)
        self.batches = BatchStore(self.home)

    def own_usage_file(self) -> Path | None:
        """This process's usage file, once it is open."""
        return self.usage.path if self.usage is not None else None

    @property
    def usage_dir(self) -> Path:
        return self.config.usage_dir or usage_dir(self.home)

    @property
    def verdict_log(self) -> Path:
        """The tribunal's runs: the configured file, else the router's home's."""
        return self.config.verdict_log or default_log_path(self.home)


STATE: web.AppKey[RouterState] = web.AppKey("state", RouterState)
MODEL: web.RequestKey[str] = web.RequestKey("model", str)  # the model a request is counted under
# The status a stream ended with, where it is not its response's (200, sent before it waited).
STATUS: web.RequestKey[int] = web.RequestKey("status", int)
