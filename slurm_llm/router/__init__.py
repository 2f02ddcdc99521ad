"""The aiohttp gateway in front of every deployed model: OpenAI and TGI APIs, bulk requests,
load-aware balancing, admission control, health probes, metrics and API keys; run in-process
(``RouterThread``), in the foreground (``serve``) or as a job of its own (``launch_router``)."""

from slurm_llm._api_keys import load_api_keys
from slurm_llm._public import present_as_public
from slurm_llm.jobs._front_end_job import FrontEndJob
from slurm_llm.router._admission import ModelLoad
from slurm_llm.router._app import build_app
from slurm_llm.router._backends import Backend, BackendPool
from slurm_llm.router._config import RouterConfig
from slurm_llm.router._job import launch_router
from slurm_llm.router._policies import POLICIES
from slurm_llm.router._probes import ProbeConfig
from slurm_llm.router._server import RouterThread, serve

__all__ = [
    "POLICIES",
    "Backend",
    "BackendPool",
    "FrontEndJob",
    "ModelLoad",
    "ProbeConfig",
    "RouterConfig",
    "RouterThread",
    "build_app",
    "launch_router",
    "load_api_keys",
    "serve",
]

present_as_public(__name__, globals(), __all__)
