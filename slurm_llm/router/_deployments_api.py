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
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from slurm_llm._errors import SlurmLLMError
from slurm_llm.control._deployment import Deployment, ReplicaStatus, attach, list_deployments
from slurm_llm.router._auth import require_operator, sees_everything
from slurm_llm.router._errors import RouterError
from slurm_llm.router._metering import CALLER
from slurm_llm.router._requests import read_json, validated
from slurm_llm.router._routes import Routes
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
            "text": controller.describe(now) if dead is None else (
                f"dead: {dead}; dead replicas are not replaced. Restart it with: "
                f"slurm-llm controller start {name}"
            ),
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
    """The latest reading of every deployment, shared by all viewers; one reading at a time.

    A reading is fresh for ``FRESH_S`` from when it began. A change (scale, stop) calls
    ``forget``: a reading that began before it is then served to no one as fresh, whoever
    waited for it, so the page shows the change on its next look."""

    def __init__(self, state: RouterState) -> None:
        self.state = state
        self.read_at = -FRESH_S
        self.latest: list[dict[str, Any]] = []
        self.changes = 0  # forget()s so far
        self.reading: asyncio.Task[list[dict[str, Any]]] | None = None
        self.reading_since = (0.0, 0)  # when the reading began, and after how many changes

    def names(self) -> list[str]:
        pool = self.state.pool
        if pool.registry is None:  # fixed replicas only: no deployment of its own
            return []
        if pool.deployment is not None:
            return [pool.deployment]
        return list_deployments(self.state.home)

    def attached(self, name: str) -> Deployment:
        """The deployment ``name`` behind this router, or a 404. Blocks (files)."""
        found = attach(name, self.state.home, missing_ok=True) if name in self.names() else None
        if found is None:
            raise RouterError(404, f"no deployment {name!r} behind this router", "not_found")
        return found

    def read_all(self) -> list[dict[str, Any]]:
        now = time.time()
        found = (describe(name, self.state.home, now) for name in self.names())
        return [deployment for deployment in found if deployment is not None]

    async def current(self) -> list[dict[str, Any]]:
        if time.monotonic() - self.read_at < FRESH_S:
            return self.latest
        if self.reading is None or self.reading_since[1] != self.changes:
            self.reading = asyncio.create_task(asyncio.to_thread(self.read_all))
            self.reading_since = (time.monotonic(), self.changes)
            self.reading.add_done_callback(self.read)
        reading, (began, changes) = self.reading, self.reading_since
        try:
            found = await asyncio.shield(reading)
        except (SlurmLLMError, OSError, subprocess.SubprocessError) as exc:  # SLURM, the files
            raise RouterError(503, f"cannot read the deployments now: {exc}",
                              "service_unavailable", retry_after=2) from None  # fmt: skip
        if changes == self.changes and began > self.read_at:
            self.latest, self.read_at = found, began
        return found

    def read(self, reading: asyncio.Task[list[dict[str, Any]]]) -> None:
        """A reading is over: the next look after its freshness starts another (its failure,
        if no viewer waited any more, is consumed here rather than logged as never read)."""
        if self.reading is reading:
            self.reading = None
        if not reading.cancelled():
            reading.exception()

    def forget(self) -> None:
        """After a change: the next viewer reads afresh."""
        self.changes += 1
        self.read_at = -FRESH_S


VIEW: web.AppKey[DeploymentsView] = web.AppKey("deployments", DeploymentsView)


async def deployments(request: web.Request) -> web.Response:
    """Replicas' log tails (which may hold prompts, where an engine logs them) go only to
    callers who see everything (``sees_everything``)."""
    found = await request.app[VIEW].current()
    state = request.app[STATE]
    if not sees_everything(state.callers, request.get(CALLER)):
        found = [{**d, "replicas": [{**r, "log_tail": []} for r in d["replicas"]]} for d in found]
    return web.json_response({"deployments": found})


async def changed(request: web.Request, change: Callable[[Deployment], Any]) -> Any:
    """``change`` applied to the deployment in the path, in a thread, for an operator."""
    state = request.app[STATE]
    require_operator(state.callers, request.get(CALLER), "scaling or stopping a deployment")
    view = request.app[VIEW]
    name = request.match_info["name"]
    try:
        return await asyncio.to_thread(lambda: change(view.attached(name)))
    except SlurmLLMError as exc:
        raise RouterError(409, str(exc), "conflict") from None
    finally:
        view.forget()


async def scale(request: web.Request) -> web.Response:
    _, body = await read_json(request)
    replicas = validated(ScaleRequest, body).replicas

    def scaled(deployment: Deployment) -> int:
        deployment.scale(replicas)
        return deployment.spec.replicas

    wanted = await changed(request, scaled)
    return web.json_response({"name": request.match_info["name"], "replicas_wanted": wanted})


async def stop(request: web.Request) -> web.Response:
    await changed(request, Deployment.stop)
    return web.json_response({"name": request.match_info["name"], "stopped": True})


def add_routes(routes: Routes) -> None:
    app = routes.app
    app[VIEW] = DeploymentsView(app[STATE])
    routes.get("/v1/deployments", deployments)
    routes.post("/v1/deployments/{name}/scale", scale)
    routes.delete("/v1/deployments/{name}", stop)
