"""A minimal, fast OpenAI-compatible upstream for measuring what sits in front of it.

It does no work: ``/v1/chat/completions`` and ``/v1/completions`` answer a fixed small JSON at
once, or, with ``"stream": true``, send ``--chunks`` SSE chunks in OpenAI's chunk format (the
first at once, then one every ``--chunk-delay`` seconds) and ``data: [DONE]``. Whatever latency a
client sees beyond this server's is the proxy's. The approach is vllm-router's overhead harness:
mock workers, the same load direct and through the router.

    python benchmarks/_mock_upstream.py --port 9001 --chunks 8 --chunk-delay 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

import uvloop
from aiohttp import web

MODEL = "mock"


def completion(chat: bool) -> bytes:
    choice: dict[str, object] = {"index": 0, "finish_reason": "stop", "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": "Hello from the mock upstream."}
    else:
        choice["text"] = "Hello from the mock upstream."
    return json.dumps(
        {
            "id": "cmpl-mock",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [choice],
            "usage": {"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14},
        }
    ).encode()


def chunk(chat: bool, index: int) -> bytes:
    piece = f"tok{index} "
    choice: dict[str, object] = {"index": 0, "finish_reason": None}
    if chat:
        choice["delta"] = {"content": piece} if index else {"role": "assistant", "content": piece}
    else:
        choice["text"] = piece
    body = {
        "id": "cmpl-mock",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": 0,
        "model": MODEL,
        "choices": [choice],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def build_app(chunks: int, delay: float) -> web.Application:
    answers = {True: completion(True), False: completion(False)}
    streamed = {chat: [chunk(chat, i) for i in range(chunks)] for chat in (True, False)}

    async def generate(request: web.Request) -> web.StreamResponse:
        chat = request.path.endswith("/chat/completions")
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=answers[chat], content_type="application/json")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for index, data in enumerate(streamed[chat]):
            if index and delay:
                await asyncio.sleep(delay)
            await response.write(data)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def models(_: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "mock"}]}
        )

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_post("/v1/completions", generate)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=8, help="SSE chunks per streamed answer")
    parser.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between chunks")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    web.run_app(
        build_app(args.chunks, args.chunk_delay),
        host=args.host,
        port=args.port,
        backlog=8192,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
