"""The tribunal from Python against a running router: its chat completions and its load."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from slurm_llm._errors import SlurmLLMError
from slurm_llm.tribunal._laws import LawBook
from slurm_llm.tribunal._log import VerdictLog
from slurm_llm.tribunal._tribunal import Messages, Tribunal, TribunalConfig, TribunalResult


class TribunalError(SlurmLLMError, RuntimeError):
    """A completion the tribunal needed failed; says which model and why."""


class RouterClient:
    def __init__(
        self, session: aiohttp.ClientSession, url: str, api_key: str | None = None
    ) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def complete(self, model: str, messages: Messages, max_tokens: int) -> str:
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        async with self.session.post(
            f"{self.url}/v1/chat/completions", json=body, headers=self.headers
        ) as reply:
            payload: dict[str, Any] = await reply.json(content_type=None)
            if reply.status != 200:
                message = payload.get("error", {}).get("message", payload)
                raise TribunalError(f"{model!r} answered {reply.status}: {message}")
        return str(payload["choices"][0]["message"]["content"] or "")

    async def utilisation(self, model: str) -> float:
        async with self.session.get(f"{self.url}/v1/load", headers=self.headers) as reply:
            loads = (await reply.json())["models"]
        for load in loads:
            if load["model"] == model:  # null: no capacity at all
                return float("inf") if load["utilisation"] is None else float(load["utilisation"])
        return 0.0


def run_tribunal(
    url: str,
    prompt: str,
    generator: str,
    laws: str | LawBook = "academic",
    *,
    critic: str | None = None,
    max_rounds: int = 3,
    log: Path | None = None,
    api_key: str | None = None,
) -> TribunalResult:
    """One tribunal run through the router at ``url``; appended to the verdict log."""
    book = laws if isinstance(laws, LawBook) else LawBook.named(laws)
    config = TribunalConfig(generator=generator, critic=critic, max_rounds=max_rounds)

    async def run() -> TribunalResult:
        async with aiohttp.ClientSession() as session:
            client = RouterClient(session, url, api_key)
            tribunal = Tribunal(client.complete, book, config, VerdictLog(log), client.utilisation)
            return await tribunal.run(prompt)

    return asyncio.run(run())
