"""The RAG example (``examples/rag_chat``) as its users run it: slurm-llm's own documentation
indexed, a question answered by a real llama.cpp replica through the router, sources named."""

from __future__ import annotations

import subprocess
import sys

import pytest
import rag_chat

from slurm_llm.router import RouterThread
from tests.conftest import REPO
from tests.integration.helpers import openai_client, wait_until
from tests.scraping import scraped

pytestmark = pytest.mark.llamacpp

EXAMPLE = REPO / "examples" / "rag_chat" / "rag_chat.py"
CHATS = "slurm_llm_router_requests_total"
QUESTION = "How do I add an API key that may scale and stop deployments?"


def answered(router: RouterThread) -> float:
    labels = {"model": "smollm2", "endpoint": "/v1/chat/completions", "status": "200"}
    return scraped(router.url, CHATS, labels)


def test_an_answer_streams_through_the_router_from_the_passages_found(
    router: RouterThread,
) -> None:
    index = rag_chat.Index(REPO / "docs")
    pieces: list[str] = []
    before = answered(router)
    answer = rag_chat.ask(openai_client(router.url), "smollm2", index, QUESTION, k=3,
                          max_tokens=64, on_piece=pieces.append)  # fmt: skip
    assert len(pieces) > 1 and answer.text == "".join(pieces)
    # counted as its handler ends, which may be just after the client read the stream's end
    wait_until(lambda: answered(router) == before + 1, what="the chat counted by the router")
    assert any(p.source == "guides/keys-and-usage.md" for p in answer.retrieved)
    assert all(p in answer.retrieved for p in answer.cited)


def test_the_command_line_answers_and_names_its_sources(router: RouterThread) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "ask", QUESTION, "--url", router.url, "-k", "3"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer, _, sources = done.stdout.rpartition("\n\n")
    assert answer.strip()
    assert sources.startswith(("Sources cited:", "No passage cited"))
    assert "guides/keys-and-usage.md:" in sources
    assert "smollm2 answers" in done.stderr
