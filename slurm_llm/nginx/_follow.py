"""nginx kept in step with the endpoint registry: re-rendered and reloaded as replicas change.

nginx cannot read our registry, so a small loop does: every second it groups the live records
by model, and when that differs from what nginx serves, it renders the new configuration,
checks it with ``nginx -t`` and reloads gracefully (streams in flight finish on the old
workers). A model whose last replica went away stays in the configuration with no server, so
its clients get 503 "no replica" instead of 404 "unknown model" while a replacement starts.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from slurm_llm._paths import registry_dir
from slurm_llm._registry import Registry
from slurm_llm.nginx._config import NginxConfig
from slurm_llm.nginx._server import NginxServer

Upstreams = dict[str, list[str]]


def registry_upstreams(home: Path | None = None, deployment: str | None = None) -> Upstreams:
    """Each model's live replica URLs, sorted, as the registry has them now; not those being
    drained (scaled down), which must get no new request."""
    by_model: defaultdict[str, list[str]] = defaultdict(list)
    for record in Registry(registry_dir(home)).records(deployment):
        if not record.draining:
            by_model[record.model].append(record.url)
    return {model: sorted(urls) for model, urls in sorted(by_model.items())}


def merged(previous: Mapping[str, Sequence[str]], live: Upstreams) -> Upstreams:
    """``live``, plus every model served before with no replica now (answered with 503)."""
    return {**{model: [] for model in previous}, **live}


def follow_registry(
    server: NginxServer,
    home: Path | None = None,
    deployment: str | None = None,
    interval_s: float = 1.0,
    stop: threading.Event | None = None,
    on_reload: Callable[[NginxConfig], None] = lambda config: None,
) -> None:
    """Reloads ``server`` whenever the registry's replicas change, until ``stop`` is set."""
    stop = stop or threading.Event()
    while not stop.wait(interval_s):
        upstreams = merged(server.config.upstreams, registry_upstreams(home, deployment))
        if upstreams != server.config.upstreams:
            server.reload(replace(server.config, upstreams=upstreams))
            on_reload(server.config)
