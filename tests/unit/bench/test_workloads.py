"""Workloads are seeded, sized in filler words, and make the requests the engines expect."""

from __future__ import annotations

import random

import pytest

from slurm_llm._errors import SpecError
from slurm_llm.bench import workloads
from slurm_llm.bench._workloads import lorem, request_body, workload


def test_the_same_seed_gives_the_same_prompts() -> None:
    kind = workload("translation")
    rng, rng_again = random.Random("0:1"), random.Random("0:1")
    first = [kind.messages(rng, 200, i) for i in range(3)]
    again = [kind.messages(rng_again, 200, i) for i in range(3)]
    assert first == again
    assert first[0] != first[1]  # every request its own text: no prefix cache can help


def test_lorem_has_the_words_asked_for_in_sentences() -> None:
    text = lorem(random.Random(1), 300)
    assert len(text.split()) == 300
    assert text.endswith(".") and text[0].isupper()


def test_the_shared_prefix_is_shared_and_the_questions_are_not() -> None:
    kind = workload("shared-prefix", seed=7)
    rng = random.Random(0)
    a, b = kind.messages(rng, 100, 0), kind.messages(rng, 100, 1)
    assert a[0] == b[0] and a[0]["role"] == "system"
    assert a[1] != b[1]


def test_the_paper_workload_is_1024_prompt_tokens_by_default() -> None:
    assert workloads()["translation"].prompt_tokens == 1024
    assert workloads()["short-chat"].prompt_tokens is None


def test_an_unknown_workload_names_the_known_ones() -> None:
    with pytest.raises(SpecError, match="translation, shared-prefix, short-chat, long-generation"):
        workload("translate")


def test_requests_stream_with_usage_and_a_fixed_length() -> None:
    body = request_body("m", [{"role": "user", "content": "hi"}], 64, ignore_eos=True)
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and body["max_tokens"] == 64 and body["temperature"] == 0
    plain = request_body("m", [], 1, ignore_eos=False, stream=False)
    assert "ignore_eos" not in plain and "stream_options" not in plain
