"""The aiohttp gateway in front of every deployed model (OpenAI-compatible)."""

from slurm_llm.router._app import RouterConfig, build_app
from slurm_llm.router._backends import Backend, BackendPool
from slurm_llm.router._server import RouterThread, serve

__all__ = ["Backend", "BackendPool", "RouterConfig", "RouterThread", "build_app", "serve"]
