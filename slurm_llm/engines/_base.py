"""What every engine module provides: a command line, its environment, and a readiness probe.

An engine module knows only its own server. The launcher owns processes, ports and GPUs and hands
the engine a ``LaunchContext``; adding an engine means adding one module with an ``Engine``
subclass and listing it in ``slurm_llm.engines``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from slurm_llm._errors import EngineError
from slurm_llm.spec._model_spec import ModelSpec


@dataclass(frozen=True)
class LaunchContext:
    """Where and with what one engine process runs, decided by the launcher on the node."""

    host: str
    port: int
    model_path: str
    gpus: tuple[str, ...] = ()
    cpus: int = 1
    # A replica spanning nodes: this node's rank, and where rank 0 coordinates.
    nodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Engine(ABC):
    name: ClassVar[str]
    executable_name: ClassVar[str]

    @abstractmethod
    def arguments(self, spec: ModelSpec, ctx: LaunchContext) -> list[str]:
        """The server's arguments, after its executable."""

    def request_context(self, spec: ModelSpec) -> int:
        """Tokens one request may use (prompt and answer), which long-input workflows split by."""
        return spec.context_length

    def takes_priority(self, spec: ModelSpec) -> bool:
        """Whether the server orders its queue by each request's ``priority`` field (and
        accepts one); the router then passes the caller's class on."""
        return False

    def environment(self, spec: ModelSpec, ctx: LaunchContext) -> dict[str, str]:
        """Variables added to the job's environment; the spec's own ``env`` wins."""
        env = {"CUDA_VISIBLE_DEVICES": ",".join(ctx.gpus)} if ctx.gpus else {}
        return {**env, **spec.env}

    def executable(self, spec: ModelSpec) -> str:
        if spec.engine_env is None:
            return self.executable_name
        return str(Path(spec.engine_env).expanduser() / "bin" / self.executable_name)

    def command(self, spec: ModelSpec, ctx: LaunchContext) -> list[str]:
        argv = [self.executable(spec), *self.arguments(spec, ctx), *spec.engine_args]
        if spec.container is None:
            return argv
        gpu_flag = ["--nv"] if ctx.gpus else []
        return ["apptainer", "exec", *gpu_flag, spec.container, *argv]

    def probe(self, spec: ModelSpec, url: str, timeout: float = 30.0) -> None:
        """Succeeds only if the server generates a token: health endpoints answer 200 while an
        engine core is dead (vLLM #11996), so nothing short of a generation proves readiness."""
        body = {
            "model": spec.name,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 1,
            "temperature": 0,
        }
        reply = post_json(f"{url}/v1/chat/completions", body, timeout)
        if not reply.get("choices"):
            raise EngineError(f"{url} answered a generation without choices: {reply}")


def post_json(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        raise EngineError(f"{url} answered HTTP {exc.code}: {detail}") from None
    except (OSError, ValueError) as exc:
        raise EngineError(f"{url} did not answer: {exc}") from None
    return reply
