"""The OpenAI-compatible gateway: one address for every deployed model.

A request is routed by its ``model`` field to a replica chosen by load. A non-streamed request
that meets a refused connection or a 5xx is retried on a different replica until the attempts
or the deadline run out, so a dying replica costs latency, not errors. A streamed request is
retried only before its first byte; after that the bytes are passed through as they come, and a
break ends the stream with an SSE error event instead of a silent hang. Bad requests get a 4xx
whose message names the problem; no stack trace ever reaches a client.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from slurm_llm.router._backends import Backend, BackendPool


@dataclass(frozen=True)
class RouterConfig:
    attempts: int = 3  # replicas tried for one non-streamed request
    deadline_s: float = 600.0  # a request's whole budget, retries included
    connect_timeout_s: float = 5.0
    idle_stream_timeout_s: float = 120.0  # silence allowed between two chunks of a stream
    max_body_bytes: int = 4 * 2**20
    retry_backoff_s: float = 0.05


POOL: web.AppKey[BackendPool] = web.AppKey("pool", BackendPool)
CONFIG: web.AppKey[RouterConfig] = web.AppKey("config", RouterConfig)
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)

REQUIRED = {"/v1/chat/completions": "messages", "/v1/completions": "prompt"}


def error(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "code": status}}
    return web.json_response(body, status=status, headers=headers)


async def parse_request(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        return error(400, f"the request body is not valid JSON: {exc}", "invalid_request_error")
    except UnicodeDecodeError:
        return error(400, "the request body is not UTF-8 text", "invalid_request_error")
    if not isinstance(body, dict):
        return error(400, "the request body must be a JSON object", "invalid_request_error")
    if not isinstance(body.get("model"), str):
        return error(400, "the field 'model' (a string) is required", "invalid_request_error")
    field = REQUIRED.get(request.path)
    if field and field not in body:
        return error(
            400, f"the field '{field}' is required for {request.path}", "invalid_request_error"
        )
    return body


async def proxy(request: web.Request) -> web.StreamResponse:
    parsed = await parse_request(request)
    if isinstance(parsed, web.Response):
        return parsed
    pool, config = request.app[POOL], request.app[CONFIG]
    model = parsed["model"]
    if model not in pool.models():
        served = ", ".join(pool.models()) or "none yet"
        return error(404, f"model {model!r} is not served here; available: {served}", "not_found")
    deadline = time.monotonic() + config.deadline_s
    tried: set[str] = set()
    last_problem = "no replica was healthy"
    for attempt in range(config.attempts):
        backend = pool.choose(model, exclude=tried)
        if backend is None:
            break
        tried.add(backend.url)
        outcome = await forward(request, backend, parsed, deadline)
        if isinstance(outcome, web.StreamResponse):
            return outcome
        last_problem = outcome
        if attempt + 1 < config.attempts:
            await asyncio.sleep(config.retry_backoff_s * 2**attempt)
    return error(
        503,
        f"no replica of {model!r} could answer ({last_problem}); retry shortly",
        "service_unavailable",
        headers={"Retry-After": "1"},
    )


async def forward(
    request: web.Request, backend: Backend, body: dict[str, Any], deadline: float
) -> web.StreamResponse | str:
    """The client's response, or why this replica failed (then the caller may retry)."""
    session, config = request.app[SESSION], request.app[CONFIG]
    streamed = bool(body.get("stream"))
    timeout = aiohttp.ClientTimeout(
        total=None if streamed else max(deadline - time.monotonic(), 0.1),
        sock_connect=config.connect_timeout_s,
        sock_read=config.idle_stream_timeout_s if streamed else None,
    )
    backend.in_flight += 1
    try:
        async with session.post(
            f"{backend.url}{request.path}", json=body, timeout=timeout
        ) as upstream:
            if upstream.status >= 500:
                backend.failed()
                return f"{backend.url} answered {upstream.status}"
            if not streamed or upstream.status != 200:
                payload = await upstream.read()
                backend.succeeded()
                return web.Response(
                    body=payload, status=upstream.status, content_type=upstream.content_type
                )
            return await relay(request, upstream, backend)
    except (TimeoutError, aiohttp.ClientConnectionError) as exc:
        backend.failed()
        return f"{backend.url} did not answer ({type(exc).__name__})"
    finally:
        backend.in_flight -= 1


async def relay(
    request: web.Request, upstream: aiohttp.ClientResponse, backend: Backend
) -> web.StreamResponse:
    """Passes SSE bytes through as they arrive; a break ends the stream with an error event."""
    response = web.StreamResponse(
        status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        backend.succeeded()
    except (TimeoutError, aiohttp.ClientError) as exc:
        backend.failed()
        event = {"error": {"message": f"the replica broke off the stream ({type(exc).__name__})",
                           "type": "upstream_error", "code": 502}}  # fmt: skip
        await response.write(f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n".encode())
    await response.write_eof()
    return response


async def list_models(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    data = [{"id": model, "object": "model", "owned_by": "slurm-llm"} for model in pool.models()]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """200 once at least one replica is routable, so load balancers wait for real capacity."""
    pool = request.app[POOL]
    if not pool.models():
        return web.json_response({"status": "no replicas yet"}, status=503)
    return web.json_response({"status": "ready", "models": pool.models()})


@web.middleware
async def no_tracebacks(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CONFIG].max_body_bytes
        return error(413, f"the request body is larger than {limit} bytes", "invalid_request_error")
    except web.HTTPException as exc:
        return error(exc.status, exc.reason, "invalid_request_error")
    return response


def build_app(pool: BackendPool, config: RouterConfig | None = None) -> web.Application:
    config = config or RouterConfig()
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[no_tracebacks])
    app[POOL] = pool
    app[CONFIG] = config
    app.router.add_post("/v1/chat/completions", proxy)
    app.router.add_post("/v1/completions", proxy)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)

    async def lifecycle(app: web.Application) -> Any:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        app[SESSION] = aiohttp.ClientSession(connector=connector)
        pool.refresh()
        watcher = asyncio.create_task(pool.watch())
        yield
        watcher.cancel()
        await app[SESSION].close()

    app.cleanup_ctx.append(lifecycle)
    return app
