"""The floor under the router: an aiohttp server that passes each request to one upstream with
the router's own client (``slurm_llm.router._upstream``) and its answer back, streamed or not,
and does nothing else: no validation, admission, retries, failover, keys, usage or metrics.

In ``router_overhead.py`` it runs beside the router, so the difference between the two is what
the router's features cost, and the difference between it and nginx what aiohttp and Python
cost. It is a measuring stick, not a product: never put it in front of users.

    python benchmarks/_bare_proxy.py --port 9002 --upstream http://127.0.0.1:9001
"""

from __future__ import annotations

import argparse
import resource
from collections.abc import AsyncIterator

import uvloop
from aiohttp import web

from slurm_llm.router._server import settle_heap
from slurm_llm.router._upstream import Upstreams

UPSTREAMS = web.AppKey("upstreams", Upstreams)


def build_app(upstream: str) -> web.Application:
    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        answer = await request.app[UPSTREAMS].post(
            upstream, request.path, body, deadline=None, idle_s=120
        )
        try:
            if answer.content_type != "text/event-stream":
                payload = await answer.read()
                return web.Response(
                    body=payload, status=answer.status, content_type=answer.content_type
                )
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            async for chunk in answer.chunks():
                await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            answer.release()

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        app[UPSTREAMS] = Upstreams(connect_timeout_s=5)
        settle_heap()  # as the router does: what it costs is the router's, not the floor's
        yield
        app[UPSTREAMS].close()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_post("/v1/completions", forward)
    app.router.add_get("/health", health)
    app.cleanup_ctx.append(lifecycle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://host:port")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    web.run_app(build_app(args.upstream), host=args.host, port=args.port, backlog=8192,
                access_log=None, print=None, loop=uvloop.new_event_loop())  # fmt: skip


if __name__ == "__main__":
    main()
