"""The embedded default: two SmolLM2 replicas here, a few real chat requests, a clean stop.

It is what ``slurm-llm demo`` runs and what the README's first command ends in, so it checks what
a new user would: that the deployment becomes ready, that both replicas answer (one request
streamed token by token), and that nothing is left running afterwards.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import aiohttp
from rich.console import Console
from rich.table import Table

from slurm_llm._registry import pid_alive
from slurm_llm._sse import DONE, data_of
from slurm_llm.control._deployment import deploy
from slurm_llm.spec._model_spec import ModelSpec

QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colours.",
    "Write one sentence about the sea.",
    "What does a compiler do?",
)
MAX_TOKENS = 48


@dataclass(frozen=True)
class Answer:
    question: str
    url: str
    text: str
    streamed: bool
    seconds: float
    first_token_s: float | None
    tokens: int


async def ask(session: aiohttp.ClientSession, url: str, model: str, question: str) -> Answer:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    start = time.perf_counter()
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        reply = await response.json()
    text = reply["choices"][0]["message"]["content"]
    tokens = int(reply.get("usage", {}).get("completion_tokens", 0))
    return Answer(question, url, text, False, time.perf_counter() - start, None, tokens)


async def ask_streamed(
    session: aiohttp.ClientSession, url: str, model: str, question: str
) -> Answer:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for raw in response.content:
            data = data_of(raw)
            if data is None or data == DONE:
                continue
            delta = json.loads(data)["choices"][0]["delta"]
            if content := delta.get("content"):
                first = first if first is not None else time.perf_counter() - start
                pieces.append(content)
    return Answer(
        question, url, "".join(pieces), True, time.perf_counter() - start, first, len(pieces)
    )


async def ask_all(endpoints: list[str], model: str) -> list[Answer]:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        streamed = ask_streamed(session, endpoints[0], model, QUESTIONS[0])
        plain = [
            ask(session, endpoints[i % len(endpoints)], model, question)
            for i, question in enumerate(QUESTIONS[1:], start=1)
        ]
        return list(await asyncio.gather(streamed, *plain))


def run_demo(replicas: int = 2, executor: str = "local", console: Console | None = None) -> None:
    console = console or Console()
    spec = ModelSpec.preset("smollm2-135m")
    console.print(
        f"[bold]Deploying[/] {spec.name} ({spec.engine}, {replicas} replicas, {executor})"
    )
    started = time.perf_counter()
    with deploy(spec, replicas=replicas, executor=executor) as deployment:
        ready_s = time.perf_counter() - started
        console.print(f"Ready in {ready_s:.2f} s: {', '.join(deployment.endpoints)}")
        answers = asyncio.run(ask_all(deployment.endpoints, spec.name))
        for answer in answers:
            how = "streamed" if answer.streamed else "plain"
            console.print(f"\n[bold]Q:[/] {answer.question}  [dim]({how}, {answer.url})[/]")
            console.print(f"[bold]A:[/] {answer.text.strip()}", highlight=False)
        table = Table(title="Timings (SmolLM2-135M, temperature 0)")
        for column in ("question", "replica", "mode", "time", "first token", "tokens/s"):
            table.add_column(column)
        for answer in answers:
            table.add_row(
                answer.question,
                answer.url.rsplit(":", 1)[-1],
                "streamed" if answer.streamed else "plain",
                f"{answer.seconds:.2f} s",
                "-" if answer.first_token_s is None else f"{answer.first_token_s * 1000:.0f} ms",
                f"{answer.tokens / answer.seconds:.0f}",
            )
        console.print(table)
        pids = {
            f"{kind} of replica {r.replica}": pid
            for r in deployment.records()
            for kind, pid in (("engine", r.engine_pid), ("launcher", r.launcher_pid))
        }
    leftovers = [f"{what} (pid {pid})" for what, pid in pids.items() if pid_alive(pid)]
    if leftovers:
        raise RuntimeError(f"still running after stop: {', '.join(leftovers)}")
    console.print(
        f"Stopped cleanly; no replica left running. Total {time.perf_counter() - started:.1f} s."
    )
