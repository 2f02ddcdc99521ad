"""The router's aiohttp application: routes, the checks every request passes, its lifecycle.

Every request passes one middleware that checks the API key, counts the request in the metrics
and turns any ``RouterError`` into a JSON answer in the caller's dialect (OpenAI or TGI). No
stack trace ever reaches a client: an unexpected exception is logged here and answered 500.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
from slurm_llm.router._state import MODEL, STATE, STATUS, RouterState
from slurm_llm.router._upstream import Upstreams

log = logging.getLogger("slurm_llm.router")
OPEN = OPEN_PATHS | _console.asset_paths()  # the console's files hold no data (``_console``)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def openai_error(exc: RouterError) -> web.Response:
    body = {
        "error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.status}
    }
    return web.json_response(body, status=exc.status, headers=exc.headers())


def answer_error(request: web.Request, exc: RouterError) -> web.Response:
    return _tgi_api.tgi_error(exc) if _tgi_api.is_tgi_path(request.path) else openai_error(exc)


@web.middleware
async def checked(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    started = time.monotonic()
    try:
        if request.path not in OPEN:
            request[CALLER] = state.callers.identify(request)
        response = await handler(request)
    except RouterError as exc:
        if isinstance(exc, Rejected):
            state.metrics.rejections.labels(request.get(MODEL, UNKNOWN_MODEL), exc.reason).inc()
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
        resource = request.match_info.route.resource
        endpoint = resource.canonical if resource else "unmatched"
        # Only an open stream can end with another status than its response's: a plain answer
        # need not be looked up (a lookup that misses raises and catches a KeyError).
        plain = type(response) is web.Response
        status = response.status if plain else request.get(STATUS, response.status)
        state.metrics.answered(model, endpoint, status, time.monotonic() - started)
    return response


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
    app = web.Application(client_max_size=state.config.max_body_bytes, middlewares=[checked])
    app[STATE] = state
    _openai_api.add_routes(app)
    _tgi_api.add_routes(app)
    app.router.add_post("/v1/batch", _batch.batch)
    _files_api.add_routes(app)
    _batches_api.add_routes(app)
    app.router.add_post("/v1/tribunal", _tribunal_api.tribunal)
    app.router.add_post("/v1/map_reduce", _map_reduce_api.map_reduce)
    app.router.add_get("/v1/load", load)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    _openapi.add_routes(app)
    _deployments_api.add_routes(app)
    _load_history.add_routes(app)
    _verdicts_api.add_routes(app)
    if state.config.ui:
        _console.add_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        upstreams = Upstreams(state.config.connect_timeout_s)
        state.dispatcher = Dispatcher(state.admission, upstreams, state.config, state.metrics)
        if state.config.record_usage:
            state.usage = UsageLog(state.usage_dir)
        pool.refresh()
        tasks = [
            asyncio.create_task(pool.watch()),
            asyncio.create_task(state.metrics.publish_forever()),
        ]
        if pool.registry is not None:  # replicas of deployments: some may be elastic
            tasks.append(asyncio.create_task(state.elastic.run()))
        if state.config.probes.interval_s > 0:
            tasks.append(asyncio.create_task(probe_forever(pool, upstreams, state.config.probes)))
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
