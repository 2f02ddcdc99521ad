"""The requests a benchmark sends: the paper's translation task and three others, all seeded.

``translation`` is the paper's workload: a prompt of about 1024 tokens (Lorem Ipsum to
translate) and a fixed number of generated tokens. Every request gets its own text, so an
engine's prefix cache cannot make the prompts cheaper than they were in the paper.
``shared-prefix`` is the opposite case: one long system prompt shared by every request, then a
short question, which is where prefix caching and prefix-affine routing pay off.
``short-chat`` and ``long-generation`` are short prompts with short and long answers.

Prompt lengths are in tokens of the served model's own tokenizer: the filler is sized by asking
the server how many tokens two probe prompts take (``usage.prompt_tokens``), so the same
workload has the same length on any engine, behind any front end.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slurm_llm._errors import SpecError

LOREM_TEXT = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut "
    "labore et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris "
    "nisi aliquip ex ea commodo consequat duis aute irure in reprehenderit voluptate velit esse "
    "cillum eu fugiat nulla pariatur excepteur sint occaecat cupidatat non proident sunt culpa "
    "qui officia deserunt mollit anim id est laborum curabitur pretium tincidunt lacus nulla "
    "gravida orci a odio nullam varius turpis et commodo pharetra est eros bibendum elit nec "
    "luctus magna felis sollicitudin mauris integer lectus quam ultrices vitae"
)
LOREM = tuple(LOREM_TEXT.split())

QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colours.",
    "How many legs does a spider have?",
    "What does a compiler do?",
    "Give a synonym for 'quick'.",
    "Why is the sky blue?",
    "What is 12 times 12?",
    "Who wrote Hamlet?",
    "What is photosynthesis?",
    "Explain recursion in one sentence.",
    "What is the boiling point of water?",
    "Name a prime number above 50.",
)

TOPICS = ("a lighthouse keeper", "a lost robot", "two rival chefs", "a city under the sea")

Messages = list[dict[str, str]]


def lorem(rng: random.Random, words: int) -> str:
    """``words`` Lorem Ipsum words in sentences of 8 to 16, drawn by ``rng``."""
    out: list[str] = []
    while len(out) < words:
        sentence = rng.choices(LOREM, k=min(rng.randint(8, 16), words - len(out)))
        out.extend([sentence[0].capitalize(), *sentence[1:-1], sentence[-1] + "."])
    return " ".join(out)


@dataclass(frozen=True)
class Workload:
    """A kind of request. ``prompt_tokens`` is the default prompt length this workload is
    sized to (None: short prompts of whatever length they have)."""

    name: str
    description: str
    prompt_tokens: int | None
    output_tokens: int
    # (random source, filler words, index of the request in its level) -> chat messages
    messages: Callable[[random.Random, int, int], Messages]


def _translation(rng: random.Random, words: int, index: int) -> Messages:
    text = lorem(rng, words)
    return [{"role": "user", "content": f"Translate this Lorem Ipsum text into English:\n\n{text}"}]


def _shared_prefix(seed: int) -> Callable[[random.Random, int, int], Messages]:
    def messages(rng: random.Random, words: int, index: int) -> Messages:
        shared = lorem(random.Random(f"shared-prefix:{seed}"), words)
        question = f"{rng.choice(QUESTIONS)} (Question {index}.)"
        return [
            {"role": "system", "content": f"Reference text:\n\n{shared}"},
            {"role": "user", "content": question},
        ]

    return messages


def _short_chat(rng: random.Random, words: int, index: int) -> Messages:
    return [{"role": "user", "content": rng.choice(QUESTIONS)}]


def _long_generation(rng: random.Random, words: int, index: int) -> Messages:
    return [{"role": "user", "content": f"Write a long story about {rng.choice(TOPICS)}."}]


def workloads(seed: int = 0) -> dict[str, Workload]:
    """Every workload, by name (the shared prefix depends on the seed)."""
    return {
        w.name: w
        for w in (
            Workload(
                "translation",
                "the paper's: translate ~1024 tokens of Lorem Ipsum, a fresh text per request",
                1024, 128, _translation,
            ),
            Workload(
                "shared-prefix",
                "one ~1024-token system prompt shared by all requests, then a short question",
                1024, 64, _shared_prefix(seed),
            ),
            Workload("short-chat", "one-line questions, short answers", None, 64, _short_chat),
            Workload(
                "long-generation", "a one-line prompt, a long answer", None, 512, _long_generation
            ),
        )
    }  # fmt: skip


def workload(name: str, seed: int = 0) -> Workload:
    known = workloads(seed)
    if name not in known:
        raise SpecError(f"unknown workload {name!r}; choose one of: {', '.join(known)}")
    return known[name]


def request_body(
    model: str, messages: Messages, max_tokens: int, ignore_eos: bool, stream: bool = True
) -> dict[str, Any]:
    """A chat completion request. ``ignore_eos`` (vLLM and llama.cpp both take it) makes every
    answer exactly ``max_tokens`` long, so levels compare the same work; greedy decoding keeps
    runs repeatable."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        body["ignore_eos"] = True
    return body
