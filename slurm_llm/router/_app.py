"""The router's aiohttp application: routes, the checks every request passes, its lifecycle.

Every route's handler is wrapped in the same checks (``checked``, added by ``_routes.Routes``):
the API key, the request counted in the metrics, and any ``RouterError`` turned into a JSON
answer in the caller's dialect (OpenAI or TGI). No stack trace ever reaches a client: an
unexpected exception is logged here and answered 500. A path no route serves is answered by
``unmatched``, checked the same way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

from aiohttp import web

from slurm_llm._usage import UsageLog
from slurm_llm.router import (
    _batch,
    _batches_api,
    _console,
    _deployments_api,
    _files_api,
    _load_history,
    _map_reduce_api,
    _openai_api,
    _openapi,
    _tgi_api,
    _tribunal_api,
    _verdicts_api,
)
from slurm_llm.router._admission import Rejected
from slurm_llm.router._auth import OPEN_PATHS
from slurm_llm.router._backends import BackendPool
from slurm_llm.router._config import RouterConfig
from slurm_llm.router._dispatch import Dispatcher
from slurm_llm.router._errors import RouterError
from slurm_llm.router._metering import CALLER, add_rate_limit_headers
from slurm_llm.router._metrics import UNKNOWN_MODEL
from slurm_llm.router._probes import probe_forever
from slurm_llm.router._routes import Handler, Routes
from slurm_llm.router._state import MODEL, STATE, STATUS, RouterState
from slurm_llm.router._upstream import Upstreams

log = logging.getLogger("slurm_llm.router")
OPEN = OPEN_PATHS | _console.asset_paths()  # the console's files hold no data (``_console``)


def openai_error(exc: RouterError) -> web.Response:
    body = {
        "error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.status}
    }
    return web.json_response(body, status=exc.status, headers=exc.headers())


def answer_error(request: web.Request, exc: RouterError) -> web.Response:
    return _tgi_api.tgi_error(exc) if _tgi_api.is_tgi_path(request.path) else openai_error(exc)


def checked(handler: Handler, route: str) -> Handler:
    """``handler`` behind the checks every request passes (``_routes``): the caller's key,
    a POST counted under ``route`` in the metrics, and any ``RouterError`` (or aiohttp error,
    or bug) answered as JSON in the caller's dialect."""

    async def check(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        started = time.monotonic()
        try:
            if request.path not in OPEN:
                caller = request[CALLER] = state.callers.identify(request)
                if (reading := state.limiter.read_ahead(caller)) is not None:
                    await reading
            response = await handler(request)
        except RouterError as exc:
            if isinstance(exc, Rejected):
                model = request.get(MODEL, UNKNOWN_MODEL)
                state.metrics.rejections.labels(model, exc.reason).inc()
            response = answer_error(request, exc)
        except web.HTTPRequestEntityTooLarge:
            limit = state.config.max_body_bytes
            response = answer_error(
                request, RouterError(413, f"the request body is larger than {limit} bytes")
            )
        except web.HTTPException as exc:
            response = answer_error(request, RouterError(exc.status, exc.reason))
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.path)
            response = answer_error(
                request,
                RouterError(500, "the router failed on this request; see its log", "server_error"),
            )
        if request.method == "POST":
            model = request.get(MODEL, UNKNOWN_MODEL)
            # Only an open stream can end with another status than its response's: a plain
            # answer need not be looked up (a lookup that misses raises and catches a KeyError).
            plain = type(response) is web.Response
            status = response.status if plain else request.get(STATUS, response.status)
            state.metrics.answered(model, route, status, time.monotonic() - started)
        return response

    return check


async def unmatched(request: web.Request) -> web.StreamResponse:
    """A request no route serves: 405 where the path has routes for other methods, else 404,
    as JSON like every other error (aiohttp's own answers are plain text)."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        takes = ", ".join(sorted(allowed))
        response = answer_error(
            request, RouterError(405, f"{request.path} takes {takes}, not {request.method}")
        )
        response.headers["Allow"] = takes
        return response
    raise RouterError(404, f"there is no {request.path} here; see /docs for the APIs", "not_found")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """200 once at least one replica is routable, or a model scaled to zero can be woken (a
    request is what wakes it: a load balancer must not keep requests away), so load balancers
    wait for real capacity."""
    state = request.app[STATE]
    loads = [state.admission.load(model) for model in state.pool.models()]
    wakeable = state.pool.wakeable_models()
    if not any(load.routable for load in loads) and not wakeable:
        return web.json_response({"status": "no routable replica yet"}, status=503)
    models = sorted({*(load.model for load in loads), *wakeable})
    return web.json_response({"status": "ready", "models": models})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.exposition()
    return web.Response(
        body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


async def load(request: web.Request) -> web.Response:
    """In-flight requests, capacity and queue per model, for workflows that shed work."""
    state = request.app[STATE]
    loads = [state.admission.load(model) for model in state.pool.models()]
    return web.json_response(
        {"models": [{**asdict(load), "utilisation": finite(load.utilisation)} for load in loads]}
    )


def finite(value: float) -> float | None:
    """JSON has no infinity: a model with no capacity left reports null."""
    return None if math.isinf(value) else value


def build_app(
    pool: BackendPool, config: RouterConfig | None = None, home: Path | None = None
) -> web.Application:
    state = RouterState(config or RouterConfig(), pool, home)
    app = web.Application(client_max_size=state.config.max_body_bytes)
    app[STATE] = state
    routes = Routes(app, checked)
    _openai_api.add_routes(routes)
    _tgi_api.add_routes(routes)
    routes.post("/v1/batch", _batch.batch)
    _files_api.add_routes(routes)
    _batches_api.add_routes(routes)
    routes.post("/v1/tribunal", _tribunal_api.tribunal)
    routes.post("/v1/map_reduce", _map_reduce_api.map_reduce)
    routes.get("/v1/load", load)
    routes.get("/health", health)
    routes.get("/ready", ready)
    routes.get("/metrics", metrics)
    _openapi.add_routes(routes)
    _deployments_api.add_routes(routes)
    _load_history.add_routes(routes)
    _verdicts_api.add_routes(routes)
    if state.config.ui:
        _console.add_routes(routes)
    routes.any_other(unmatched)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        upstreams = Upstreams(state.config.connect_timeout_s)
        state.dispatcher = Dispatcher(state.admission, upstreams, state.config, state.metrics)
        if state.config.record_usage:
            state.usage = UsageLog(state.usage_dir)
        if state.callers.has_quotas():
            try:
                await asyncio.to_thread(state.limiter.read_period_starts)  # before it listens
            except OSError as exc:  # its first quota request tries again (a 503 if it fails)
                log.warning("cannot read the usage records for the keys' quotas: %s", exc)
        pool.refresh()
        tasks = [
            asyncio.create_task(pool.watch()),
            asyncio.create_task(state.metrics.publish_forever()),
        ]
        if pool.registry is not None:  # replicas of deployments: some may be elastic
            tasks.append(asyncio.create_task(state.elastic.run()))
        if state.config.probes.interval_s > 0:
            tasks.append(asyncio.create_task(probe_forever(pool, upstreams, state.config.probes)))
        tasks.append(asyncio.create_task(state.limiter.keep_reading()))  # reads once keys ask
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        state.metrics.fold()  # with several workers, the last second's counts into the files
        upstreams.close()
        if state.usage is not None:
            state.usage.close()

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(_batches_api.batch_runs)  # inside the dispatcher's life
    if state.callers.required:  # without keys no caller has limits: no hook on each answer
        app.on_response_prepare.append(add_rate_limit_headers)
    return app
