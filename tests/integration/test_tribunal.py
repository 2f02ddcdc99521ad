"""The tribunal on real llama.cpp replicas: a full run through the router, from Python and on
chat completions; the bypass under induced load; the verdict log surviving a kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from slurm_llm import Deployment
from slurm_llm.router import RouterConfig, RouterThread
from slurm_llm.tribunal import LawBook, VerdictLog, run_tribunal
from tests.integration.helpers import get_text, openai_client, post, router_process

pytestmark = pytest.mark.llamacpp

QUESTION = {"model": "smollm2", "prompt": "Why is the sky blue?", "max_tokens": 48}


def test_a_full_tribunal_through_the_router(router: RouterThread, slurm_llm_home: Path) -> None:
    status, run, _ = post(f"{router.url}/v1/tribunal", {**QUESTION, "max_rounds": 2})
    assert status == 200, run
    assert run["answer"] and run["mode"] == "full" and run["laws"] == "academic@1"
    assert 1 <= len(run["rounds"]) <= 2
    for round_ in run["rounds"]:
        assert [v["law"] for v in round_["verdicts"]] == [
            "formal-language", "logical-rigour", "cite-the-context"
        ]  # fmt: skip
        assert {v["outcome"] for v in round_["verdicts"]} <= {"pass", "fail", "abstain"}
    assert run["outcome"] in ("accepted", "rejected", "not judged")
    logged = VerdictLog(slurm_llm_home / "tribunal" / "verdicts.jsonl").read().runs
    assert any(entry["started"] == run["started"] for entry in logged)


def test_the_python_api_and_a_narrowed_book(router: RouterThread, tmp_path: Path) -> None:
    book = LawBook.named("academic").only(["formal-language"])
    result = run_tribunal(router.url, "Say hello.", "smollm2", book, max_rounds=1,
                          log=tmp_path / "v.jsonl")  # fmt: skip
    assert len(result.rounds) == 1 and len(result.rounds[0].verdicts) == 1
    assert VerdictLog(tmp_path / "v.jsonl").read().runs[0]["answer"] == result.answer


def test_a_chat_completion_can_ask_for_the_tribunal(router: RouterThread) -> None:
    reply = openai_client(router.url).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=16,
        extra_body={"tribunal": {"laws": "academic", "only": ["formal-language"], "max_rounds": 1}},
    )  # fmt: skip
    assert reply.choices[0].message.content
    assert (reply.model_extra or {})["tribunal"]["laws"] == "academic@1"


@pytest.fixture(scope="module")
def tight_router(smollm2_llamacpp: Deployment, slurm_llm_home: Path) -> Iterator[RouterThread]:
    config = RouterConfig(replica_limit=1)
    with RouterThread(home=slurm_llm_home, deployment="shared-smollm2", config=config) as router:
        yield router


@pytest.mark.single_process
def test_the_tribunal_degrades_under_load_and_not_without(tight_router: RouterThread) -> None:
    calm = post(f"{tight_router.url}/v1/tribunal", {**QUESTION, "max_rounds": 1}).body
    assert calm["mode"] == "full"

    async def under_load() -> dict[str, object]:
        story = {"model": "smollm2", "prompt": "Tell a long story:", "max_tokens": 256,
                 "ignore_eos": True}  # fmt: skip
        async with aiohttp.ClientSession() as session:
            load = [asyncio.create_task(session.post(f"{tight_router.url}/v1/completions",
                                                     json=story)) for _ in range(6)]  # fmt: skip
            deadline = time.monotonic() + 10
            while tight_router.load("smollm2").utilisation < 2:  # 2 running + 4 waiting
                assert time.monotonic() < deadline, "the induced load never built up"
                await asyncio.sleep(0.05)
            async with session.post(f"{tight_router.url}/v1/tribunal", json=QUESTION) as reply:
                run: dict[str, object] = await reply.json()
            for reply_ in await asyncio.gather(*load):
                reply_.release()
        return run

    busy = asyncio.run(under_load())
    assert busy["mode"] == "base-only" and busy["rounds"] == [] and busy["answer"]
    assert "utilisation" in str(busy["reason"])
    metrics = get_text(f"{tight_router.url}/metrics")
    assert 'tribunal_runs_total{mode="base-only",model="smollm2",outcome="not judged"}' in metrics


def test_the_verdict_log_survives_a_kill_9_of_the_router(
    smollm2_llamacpp: Deployment, tmp_path: Path
) -> None:
    log = tmp_path / "verdicts.jsonl"
    with router_process("--deployment", "shared-smollm2", "--verdict-log", str(log)) as (
        router,
        url,
    ):
        try:
            finished = post(f"{url}/v1/tribunal", {**QUESTION, "max_rounds": 1}).body

            def doomed() -> None:
                with contextlib.suppress(OSError):  # the router dies under this request
                    post(f"{url}/v1/tribunal", QUESTION)

            in_flight = threading.Thread(target=doomed)
            in_flight.start()
            time.sleep(0.5)
        finally:
            os.kill(router.pid, signal.SIGKILL)
    in_flight.join(30)
    read = VerdictLog(log).read()
    assert any(run["started"] == finished["started"] for run in read.runs)
    assert all("answer" in run for run in read.runs)
    shown = subprocess.run(
        [sys.executable, "-m", "slurm_llm", "verdicts", "--log", str(log), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert finished["started"] in [
        json.loads(line)["started"] for line in shown.stdout.splitlines()
    ]


def test_map_reduce_over_a_text_several_times_the_context(router: RouterThread) -> None:
    facts = " ".join(
        f"Fact {i}: city {i} has {i * 7 % 13} bridges and a river named R{i}." for i in range(200)
    )
    status, result, _ = post(
        f"{router.url}/v1/map_reduce",
        {"model": "smollm2", "instruction": "Summarise the facts in two sentences.",
         "text": facts, "max_tokens": 64, "tribunal": {"only": ["formal-language"],
         "max_rounds": 1}},
    )  # fmt: skip
    assert status == 200, result
    context = result["context"]  # what one request may use on these replicas
    assert result["chunks"] >= 4, "the text is several times the context"
    assert len(result["partials"]) == result["chunks"] and all(result["partials"])
    assert result["largest_prompt_tokens"] + 64 <= context, "no call overflowed the context"
    assert result["answer"] and result["tribunal"]["laws"] == "academic@1"


def test_map_reduce_that_cannot_fit_says_why(router: RouterThread) -> None:
    status, body, _ = post(
        f"{router.url}/v1/map_reduce",
        {"model": "smollm2", "instruction": "x", "text": "y " * 5000, "max_tokens": 600},
    )
    assert status == 400 and "lower max_tokens" in body["error"]["message"]
