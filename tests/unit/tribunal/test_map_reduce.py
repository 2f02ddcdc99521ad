"""Chunked map-reduce with a word tokenizer and a scripted stand-in model: windows overlap,
every prompt fits, partial answers are reduced recursively, impossible budgets say why."""

from __future__ import annotations

import asyncio

import pytest

from slurm_llm.tribunal._map_reduce import CHAT_TEMPLATE_MARGIN, MapReduce, MapReduceError
from slurm_llm.tribunal._tribunal import Messages


class Words:
    """One token per word, so sizes are easy to reason about."""

    def __init__(self) -> None:
        self.vocabulary: dict[int, str] = {}

    async def tokenize(self, text: str) -> list[int]:
        self.vocabulary.update({hash(word): word for word in text.split()})
        return [hash(word) for word in text.split()]

    async def detokenize(self, tokens: list[int]) -> str:
        return " ".join(self.vocabulary[token] for token in tokens)


class Summariser:
    """Answers with ``answer_words`` words; records each prompt's size in words."""

    def __init__(self, answer_words: int) -> None:
        self.answer_words = answer_words
        self.prompt_sizes: list[int] = []

    async def __call__(self, messages: Messages, max_tokens: int) -> tuple[str, int]:
        size = len(messages[0]["content"].split())
        self.prompt_sizes.append(size)
        return " ".join(["note"] * min(self.answer_words, max_tokens)), size


TEXT = " ".join(f"w{i}" for i in range(5000))


def job(context: int, max_tokens: int, answer_words: int) -> tuple[MapReduce, Summariser]:
    model = Summariser(answer_words)
    return MapReduce(model, Words(), context=context, max_tokens=max_tokens, overlap=20), model


def test_windows_overlap_and_cover_the_whole_text() -> None:
    mapper, _ = job(1000, 100, 10)
    chunks = asyncio.run(mapper.split(TEXT, 300))
    assert chunks[0].split()[-20:] == chunks[1].split()[:20]
    assert chunks[-1].split()[-1] == "w4999" and all(len(c.split()) <= 300 for c in chunks)


def test_every_prompt_fits_the_budget_and_the_answer_comes_from_one_final_call() -> None:
    mapper, model = job(1000, 100, 10)
    result = asyncio.run(mapper.run("Summarise.", TEXT))
    assert result.chunks == len(result.partials) > 5 and result.levels == 2
    assert max(model.prompt_sizes) <= result.budget_tokens + 40  # the wrapping, measured
    assert max(model.prompt_sizes) + 100 + CHAT_TEMPLATE_MARGIN <= 1000


def test_partial_answers_that_do_not_fit_are_reduced_again() -> None:
    mapper, _ = job(600, 100, 100)  # 100-word partials, ~300 words of budget
    result = asyncio.run(mapper.run("Summarise.", TEXT))
    assert result.levels > 2


def test_a_context_too_small_for_the_answer_says_what_to_change() -> None:
    mapper, _ = job(300, 128, 10)
    with pytest.raises(MapReduceError, match="lower max_tokens"):
        asyncio.run(mapper.run("Summarise.", TEXT))
