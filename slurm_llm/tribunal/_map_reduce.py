"""Chunked map-reduce: inputs longer than a model's context, answered in parallel pieces.

The text is split by the model's own tokenizer (the engine's ``/tokenize`` and ``/detokenize``)
into windows that overlap a little, so no sentence is only ever seen cut in half. Each window is
answered at once across the replicas (map); the partial answers are joined and, if they still
do not fit, split and condensed again (reduce, recursively) until one final call answers from
them. Every prompt is measured in tokens before it is sent, so no call overflows the context:
the budget is the context minus the answer's ``max_tokens``, the instruction's wrapping (also
measured) and a margin for the chat template's own tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from slurm_llm._errors import SlurmLLMError
from slurm_llm.tribunal._tribunal import Messages

CHAT_TEMPLATE_MARGIN = 64  # role markers and a default system prompt, which we do not see
MAX_LEVELS = 8


class MapReduceError(SlurmLLMError, ValueError):
    """The input cannot be split to fit: says what to change."""


class Tokenizer(Protocol):
    def tokenize(self, text: str) -> Awaitable[list[int]]: ...

    def detokenize(self, tokens: list[int]) -> Awaitable[str]: ...


class CompleteCounted(Protocol):
    """One chat completion: the reply text and the prompt's size in tokens (from usage)."""

    def __call__(self, messages: Messages, max_tokens: int) -> Awaitable[tuple[str, int]]: ...


def map_prompt(instruction: str, part: str, index: int, parts: int) -> str:
    return f"{instruction}\n\nThis is part {index} of {parts} of a longer text:\n\n{part}"


def reduce_prompt(instruction: str, notes: str) -> str:
    return f"{instruction}\n\nAnswer from these notes on the parts of a longer text:\n\n{notes}"


@dataclass
class MapReduceResult:
    answer: str
    chunks: int  # windows of the input
    levels: int  # map, then each reduce that had to split again
    calls: int
    largest_prompt_tokens: int
    budget_tokens: int
    partials: list[str] = field(default_factory=list)


class MapReduce:
    def __init__(
        self,
        complete: CompleteCounted,
        tokenizer: Tokenizer,
        context: int,
        max_tokens: int = 256,
        overlap: int = 64,
    ) -> None:
        self.complete = complete
        self.tokenizer = tokenizer
        self.context = context
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.calls = 0
        self.largest_prompt = 0

    async def budget(self, instruction: str) -> int:
        """Tokens of input that fit in one call next to the instruction and the answer."""
        wrapping = len(
            await self.tokenizer.tokenize(
                reduce_prompt(instruction, "") + map_prompt("", "", 99, 99)
            )
        )
        budget = self.context - self.max_tokens - wrapping - CHAT_TEMPLATE_MARGIN
        if budget < 2 * self.max_tokens or budget <= 2 * self.overlap:
            raise MapReduceError(
                f"a {self.context}-token context leaves {budget} tokens of input per call next "
                f"to a {self.max_tokens}-token answer and the instruction; lower max_tokens, "
                "shorten the instruction, or use a model with a longer context"
            )
        return budget

    async def split(self, text: str, window: int) -> list[str]:
        tokens = await self.tokenizer.tokenize(text)
        if len(tokens) <= window:
            return [text]
        step = window - self.overlap
        starts = range(0, max(len(tokens) - self.overlap, 1), step)
        return list(
            await asyncio.gather(
                *(self.tokenizer.detokenize(tokens[s : s + window]) for s in starts)
            )
        )

    async def ask(self, prompt: str) -> str:
        text, prompt_tokens = await self.complete(
            [{"role": "user", "content": prompt}], self.max_tokens
        )
        self.calls += 1
        self.largest_prompt = max(self.largest_prompt, prompt_tokens)
        return text.strip()

    async def run(self, instruction: str, text: str) -> MapReduceResult:
        budget = await self.budget(instruction)
        chunks = await self.split(text, budget)
        if len(chunks) == 1:
            answer = await self.ask(f"{instruction}\n\n{text}")
            return MapReduceResult(answer, 1, 1, self.calls, self.largest_prompt, budget)
        asks = [
            map_prompt(instruction, chunk, i + 1, len(chunks)) for i, chunk in enumerate(chunks)
        ]
        partials = list(await asyncio.gather(*(self.ask(prompt) for prompt in asks)))
        first_partials = partials
        levels = 1
        while True:
            notes = "\n\n".join(f"Part {i + 1}: {p}" for i, p in enumerate(partials))
            pieces = await self.split(notes, budget)
            if len(pieces) == 1:
                answer = await self.ask(reduce_prompt(instruction, notes))
                return MapReduceResult(answer, len(chunks), levels + 1, self.calls,
                                       self.largest_prompt, budget, first_partials)  # fmt: skip
            levels += 1
            if levels > MAX_LEVELS or len(pieces) >= len(partials):
                raise MapReduceError(
                    f"the partial answers do not shrink ({len(partials)} → {len(pieces)} pieces); "
                    "lower max_tokens so that several fit in one call"
                )
            partials = list(await asyncio.gather(
                *(self.ask(reduce_prompt(instruction, piece)) for piece in pieces)
            ))  # fmt: skip
