"""Named keys on real llama.cpp replicas: a key over its rate gets 429 with a Retry-After that
holds, a key without access to a model gets 403 naming it, and the usage records match what the
engine said it used, for plain and streamed answers; ``slurm-llm usage`` reports them. A
tribunal is charged every call it made."""

from __future__ import annotations

import csv
import io
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from slurm_llm import Deployment
from slurm_llm._api_keys import KeysFile
from slurm_llm._usage import UsageRecord, read_usage
from slurm_llm.router import RouterConfig, RouterThread
from tests.integration.helpers import cli, post, wait_until

pytestmark = pytest.mark.llamacpp
ASK = {"model": "smollm2", "prompt": "1, 2, 3,", "max_tokens": 4}


@pytest.fixture
def keys(tmp_path: Path) -> KeysFile:
    return KeysFile(tmp_path / "keys.toml")


@pytest.fixture
def keyed_router(
    smollm2_llamacpp: Deployment, slurm_llm_home: Path, keys: KeysFile, tmp_path: Path
) -> Iterator[RouterThread]:
    keys.add("bootstrap")  # the router needs a key file with a key in it
    config = RouterConfig(keys_file=keys.path, usage_dir=tmp_path / "usage")
    with RouterThread(home=slurm_llm_home, deployment="shared-smollm2", config=config) as router:
        yield router


def client(router: RouterThread, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key=key, max_retries=0)


def wait_known(router: RouterThread, key: str) -> None:
    """Until the router has re-read its keys file and takes ``key`` (the model list is not
    metered, so waiting spends none of the key's limits)."""

    def known() -> bool:
        request = urllib.request.Request(f"{router.url}/v1/models", headers={"X-API-Key": key})
        try:
            with urllib.request.urlopen(request, timeout=10):
                return True
        except urllib.error.HTTPError:
            return False

    wait_until(known, what="the router to read the new key")


@pytest.mark.single_process
def test_a_key_over_its_rate_gets_429_with_a_retry_after_that_holds(
    keyed_router: RouterThread, keys: KeysFile
) -> None:
    key = keys.add("alice", requests_per_minute=2)
    headers = {"Authorization": f"Bearer {key}"}
    wait_known(keyed_router, key)
    assert post(f"{keyed_router.url}/v1/completions", ASK, headers).status == 200
    second = post(f"{keyed_router.url}/v1/completions", ASK, headers)
    assert second.status == 200 and second.headers["x-ratelimit-remaining-requests"] == "0"
    refused = post(f"{keyed_router.url}/v1/completions", ASK, headers)
    assert refused.status == 429 and "2 requests per minute" in refused.body["error"]["message"]
    retry_after = int(refused.headers["Retry-After"])
    assert 50 <= retry_after <= 60  # the first request leaves the window a minute after it came


def test_a_key_without_access_to_a_model_gets_403_naming_it(
    keyed_router: RouterThread, keys: KeysFile
) -> None:
    key = keys.add("bob", models=("llama-3.1-8b",))
    headers = {"X-API-Key": key}
    wait_known(keyed_router, key)
    refused = post(f"{keyed_router.url}/v1/completions", ASK, headers)
    assert refused.status == 403
    assert "may not use model 'smollm2'" in refused.body["error"]["message"]
    assert "llama-3.1-8b" in refused.body["error"]["message"]


def test_usage_records_match_the_engine_s_usage_plain_and_streamed(
    keyed_router: RouterThread, keys: KeysFile, tmp_path: Path
) -> None:
    key = keys.add("carol", account="physics")
    wait_known(keyed_router, key)
    with client(keyed_router, key) as carol:
        plain = carol.completions.create(model="smollm2", prompt="1, 2, 3,", max_tokens=5)
        chunks = list(carol.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Say hi"}], max_tokens=6,
            stream=True, stream_options={"include_usage": True},
        ))  # fmt: skip
        silent = list(carol.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Count"}], max_tokens=3,
            stream=True,
        ))  # fmt: skip
    streamed_usage = chunks[-1].usage
    assert plain.usage is not None and streamed_usage is not None and not chunks[-1].choices
    # the router asked for this stream's usage event too, and kept it from the client
    assert all(chunk.choices for chunk in silent), "a usage event the client did not ask for"
    records: list[UsageRecord] = []

    def flushed() -> bool:
        # in the order they ended: several router processes write a file each
        records[:] = sorted((r for r in read_usage(tmp_path / "usage") if r.key == "carol"),
                            key=lambda r: r.at)  # fmt: skip
        return len(records) == 3

    wait_until(flushed, what="three usage records")
    assert [(r.prompt_tokens, r.completion_tokens) for r in records[:2]] == [
        (plain.usage.prompt_tokens, plain.usage.completion_tokens),
        (streamed_usage.prompt_tokens, streamed_usage.completion_tokens),
    ]
    assert records[2].completion_tokens == 3 and records[2].prompt_tokens > 0
    assert all(r.account == "physics" and r.status == 200 and r.replica for r in records)
    assert all(r.deployment == "shared-smollm2" and r.job for r in records)  # for chargeback
    assert [r.endpoint for r in records] == ["/v1/completions", "/v1/chat/completions",
                                             "/v1/chat/completions"]  # fmt: skip
    report = cli("usage", "--dir", str(tmp_path / "usage"), "--by", "key", "--csv")
    [row] = [r for r in csv.DictReader(io.StringIO(report)) if r["key"] == "carol"]
    assert int(row["requests"]) == 3
    assert int(row["tokens"]) == sum(r.prompt_tokens + r.completion_tokens for r in records)


def test_a_tribunal_is_charged_every_call_it_made(
    keyed_router: RouterThread, keys: KeysFile, tmp_path: Path
) -> None:
    key = keys.add("erin", tokens_per_minute=100_000)
    wait_known(keyed_router, key)
    question = {"model": "smollm2", "prompt": "Name a colour.", "max_tokens": 8,
                "only": ["formal-language"], "max_rounds": 1}  # fmt: skip
    answer = post(f"{keyed_router.url}/v1/tribunal", question, {"X-API-Key": key})
    assert answer.status == 200, answer.body
    records: list[UsageRecord] = []

    def written() -> bool:
        records[:] = [r for r in read_usage(tmp_path / "usage") if r.key == "erin"]
        return bool(records)

    wait_until(written, what="the tribunal's usage record")
    [record] = records
    # a draft and a critique at least, each with its prompt: more than the question alone
    assert record.prompt_tokens > 2 * 5 and record.completion_tokens > 0 and record.replica
    used = record.prompt_tokens + record.completion_tokens
    assert int(answer.headers["x-ratelimit-remaining-tokens"]) == 100_000 - used


def test_a_revoked_key_is_refused_within_seconds(
    keyed_router: RouterThread, keys: KeysFile
) -> None:
    key = keys.add("dave")
    headers = {"X-API-Key": key}
    wait_known(keyed_router, key)
    keys.revoke("dave")
    revoked = time.monotonic()
    wait_until(lambda: post(f"{keyed_router.url}/v1/completions", ASK, headers).status == 401,
               what="the revoked key to be refused")  # fmt: skip
    assert time.monotonic() - revoked < 5
