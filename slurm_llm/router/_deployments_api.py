"""``/v1/deployments``: the deployments behind this router as their owners see them, SLURM's side
included: each replica's state, job, node, GPUs, wall-time left, URL, last error and log tail;
pending replicas with SLURM's reason; the controller; recent events. Operators scale and stop
them here too (``POST /v1/deployments/{name}/scale``, ``DELETE /v1/deployments/{name}``).

A status asks SLURM (``squeue``/``sacct``) and reads files on the shared filesystem, so it runs
in a thread, never on the event loop, and one reading serves every viewer for ``FRESH_S``: ten
open consoles cost SLURM what one does. Nothing here is on the path of a model request.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from slurm_llm._errors import SlurmLLMError
from slurm_llm.control._deployment import ReplicaStatus, attach, list_deployments
from slurm_llm.router._auth import require_operator
from slurm_llm.router._errors import RouterError
from slurm_llm.router._metering import CALLER
from slurm_llm.router._requests import read_json, validated
from slurm_llm.router._schemas import ScaleRequest
from slurm_llm.router._state import STATE, RouterState

FRESH_S = 1.0  # a reading this young is served again
EVENTS = 20  # recent events per deployment
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 16 * 1024
SLURM_MAX_AGE_S = 2.0  # squeue's answer may be this old


def log_tail(path: str | None) -> list[str]:
    """The last lines of a replica's log (its end only: logs grow without bound)."""
    if not path:
        return []
    try:
        with open(path, "rb") as log:
            log.seek(0, 2)
            size = log.tell()
            log.seek(max(0, size - LOG_TAIL_BYTES))
            data = log.read()
    except OSError:
        return []
    lines = data.decode(errors="replace").splitlines()
    if size > LOG_TAIL_BYTES:
        lines = lines[1:]  # the first may be cut
    return lines[-LOG_TAIL_LINES:]


def describe(name: str, home: Path | None, now: float) -> dict[str, Any] | None:
    """One deployment, whole; None if it stopped meanwhile. Blocks (SLURM, files)."""
    deployment = attach(name, home, missing_ok=True)
    if deployment is None:
        return None
    statuses = deployment.status(SLURM_MAX_AGE_S)
    records = {(r.replica, r.job_id): r for r in deployment.registry.records(name)}
    replicas = []
    for status in statuses:
        record = records.get((status.replica, status.job_id))
        replicas.append({
            **asdict(status),
            "engine": record.engine if record else None,
            "gpus": list(record.gpus) if record else [],
            "walltime_left_s": record.deadline - now if record and record.deadline else None,
            "ready_since": record.ready if record else None,
            "log_tail": log_tail(status.log_path) if wants_tail(status) else [],
        })  # fmt: skip
    controller = deployment.controller()
    scaling = deployment.scaling()
    spec = deployment.spec
    return {
        "name": name,
        "model": spec.name,
        "engine": spec.engine,
        "executor": deployment.kind,
        "replicas_wanted": spec.replicas,
        "replicas": replicas,
        "controller": None if controller is None else {
            "alive": (dead := controller.dead_reason(now)) is None,
            "text": controller.describe(now) if dead is None else dead,
            "kind": controller.kind,
        },
        "scaling": None if scaling is None else {
            "ready": scaling.ready, "desired": scaling.desired,
            "decisions": [str(d) for d in scaling.decisions[-5:]],
        },
        "events": [asdict(event) for event in deployment.event_log.last(EVENTS)],
    }  # fmt: skip


def wants_tail(status: ReplicaStatus) -> bool:
    """A log tail where something is to be read in it: a replica that failed or is starting."""
    return status.state in ("failed", "starting", "stopped")


class DeploymentsView:
    """The latest reading of every deployment, shared by all viewers; one reading at a time."""

    def __init__(self, state: RouterState) -> None:
        self.state = state
        self.read_at = -FRESH_S
        self.latest: list[dict[str, Any]] = []
        self.reading: asyncio.Task[list[dict[str, Any]]] | None = None

    def names(self) -> list[str]:
        pool = self.state.pool
        if pool.registry is None:  # fixed replicas only: no deployment of its own
            return []
        if pool.deployment is not None:
            return [pool.deployment]
        return list_deployments(self.state.home)

    def read_all(self) -> list[dict[str, Any]]:
        now = time.time()
        found = (describe(name, self.state.home, now) for name in self.names())
        return [deployment for deployment in found if deployment is not None]

    async def current(self) -> list[dict[str, Any]]:
        if time.monotonic() - self.read_at < FRESH_S:
            return self.latest
        if self.reading is None:
            self.reading = asyncio.create_task(asyncio.to_thread(self.read_all))
        reading = self.reading
        try:
            self.latest = await asyncio.shield(reading)
            self.read_at = time.monotonic()
        except (SlurmLLMError, OSError, subprocess.SubprocessError) as exc:  # SLURM, the files
            raise RouterError(503, f"cannot read the deployments now: {exc}",
                              "service_unavailable", retry_after=2) from None  # fmt: skip
        finally:
            if self.reading is reading and reading.done():
                self.reading = None
        return self.latest

    def forget(self) -> None:
        """After a change: the next viewer reads afresh."""
        self.read_at = -FRESH_S


VIEW: web.AppKey[DeploymentsView] = web.AppKey("deployments", DeploymentsView)


async def deployments(request: web.Request) -> web.Response:
    return web.json_response({"deployments": await request.app[VIEW].current()})


def operated(request: web.Request) -> str:
    """The deployment named in the path, once the caller may change it."""
    state = request.app[STATE]
    require_operator(state.callers, request.get(CALLER), request.remote)
    name = request.match_info["name"]
    if name not in request.app[VIEW].names():
        raise RouterError(404, f"no deployment {name!r} behind this router", "not_found")
    return name


async def scale(request: web.Request) -> web.Response:
    name = operated(request)
    _, body = await read_json(request)
    replicas = validated(ScaleRequest, body).replicas
    home = request.app[STATE].home
    deployment = attach(name, home, missing_ok=True)
    if deployment is None:
        raise RouterError(404, f"deployment {name!r} has stopped", "not_found")
    try:
        await asyncio.to_thread(deployment.scale, replicas)
    except SlurmLLMError as exc:
        raise RouterError(409, str(exc), "conflict") from None
    request.app[VIEW].forget()
    return web.json_response({"name": name, "replicas_wanted": deployment.spec.replicas})


async def stop(request: web.Request) -> web.Response:
    name = operated(request)
    deployment = attach(name, request.app[STATE].home, missing_ok=True)
    if deployment is not None:
        await asyncio.to_thread(deployment.stop)
    request.app[VIEW].forget()
    return web.json_response({"name": name, "stopped": True})


def add_routes(app: web.Application) -> None:
    app[VIEW] = DeploymentsView(app[STATE])
    app.router.add_get("/v1/deployments", deployments)
    app.router.add_post("/v1/deployments/{name}/scale", scale)
    app.router.add_delete("/v1/deployments/{name}", stop)
