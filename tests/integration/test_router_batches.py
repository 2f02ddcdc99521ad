"""OpenAI's Files and Batch API on real llama.cpp replicas, through the official client: a
batch end to end, a batch with bad lines, and a router killed with SIGKILL half-way through a
500-line batch, whose next router finishes it with each line answered exactly once."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path
from typing import Any

import openai
import pytest

from slurm_llm import Deployment
from slurm_llm.batches._batch_store import ENDED
from slurm_llm.router import RouterThread
from tests.integration.helpers import cli, router_process, wait_until

pytestmark = pytest.mark.llamacpp


def lines(count: int, **body: Any) -> bytes:
    return b"".join(
        json.dumps({
            "custom_id": f"line-{n}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "smollm2", "max_tokens": 2,
                     "messages": [{"role": "user", "content": f"Say {n}"}], **body},
        }).encode() + b"\n"
        for n in range(count)
    )  # fmt: skip


def start_batch(client: openai.OpenAI, content: bytes) -> Any:
    source = client.files.create(file=("input.jsonl", io.BytesIO(content)), purpose="batch")
    return client.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"project": "tests"},
    )  # fmt: skip


def run_batch(client: openai.OpenAI, content: bytes, timeout: float = 300) -> Any:
    batch = start_batch(client, content)
    assert batch.status == "validating" and batch.metadata == {"project": "tests"}
    wait_until(lambda: client.batches.retrieve(batch.id).status in ENDED, timeout,
               "the batch to end", every=0.5)  # fmt: skip
    return client.batches.retrieve(batch.id)


def answers(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(raw) for raw in client.files.content(file_id).text.splitlines()]


def test_the_openai_client_runs_a_batch_end_to_end(
    smollm2_llamacpp: Deployment, router: RouterThread
) -> None:
    with openai.OpenAI(base_url=f"{router.url}/v1", api_key="none") as client:
        done = run_batch(client, lines(20))
        assert done.status == "completed", done
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed) == (20, 20)
        output = answers(client, done.output_file_id)
        assert sorted(a["custom_id"] for a in output) == sorted(f"line-{n}" for n in range(20))
        for answer in output:
            body = answer["response"]["body"]
            assert answer["response"]["status_code"] == 200
            assert body["usage"]["completion_tokens"] <= 2 and body["choices"]
        assert done.error_file_id is None
        assert done.id in [b.id for b in client.batches.list()]
        client.files.delete(done.output_file_id)
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(done.output_file_id)


def test_a_batch_with_bad_lines_fails_before_any_is_sent_and_names_them(
    smollm2_llamacpp: Deployment, router: RouterThread
) -> None:
    content = lines(3) + b"{oops\n" + lines(1, model="llama-9000").replace(b"line-0", b"x")
    with openai.OpenAI(base_url=f"{router.url}/v1", api_key="none") as client:
        done = run_batch(client, content, timeout=60)
    assert done.status == "failed" and done.output_file_id is None
    assert done.errors is not None
    found = [(e.line, e.code) for e in done.errors.data or []]
    assert found == [(4, "invalid_json_line"), (5, "invalid_body")]
    assert "llama-9000" in str(done.errors.data[1].message)


def test_a_batch_cancelled_half_way_ends_with_what_was_answered(
    smollm2_llamacpp: Deployment, router: RouterThread
) -> None:
    with openai.OpenAI(base_url=f"{router.url}/v1", api_key="none") as client:
        batch = start_batch(client, lines(300))
        wait_until(lambda: completed(client, batch.id) >= 20, 120, "20 lines answered",
                   every=0.1)  # fmt: skip
        assert client.batches.cancel(batch.id).status == "cancelling"
        wait_until(lambda: client.batches.retrieve(batch.id).status == "cancelled", 120,
                   "the batch to end cancelled", every=0.2)  # fmt: skip
        done = client.batches.retrieve(batch.id)
        output = answers(client, done.output_file_id)
    assert done.request_counts is not None and 20 <= done.request_counts.completed < 300
    assert len(output) == done.request_counts.completed
    assert len({a["custom_id"] for a in output}) == len(output)


def test_a_router_killed_half_way_is_resumed_by_the_next_with_each_line_once(
    smollm2_llamacpp: Deployment, slurm_llm_home: Path
) -> None:
    options = ("--deployment", "shared-smollm2", "--probe-interval", "0")
    with router_process(*options) as (process, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        batch = start_batch(client, lines(500))
        wait_until(lambda: completed(client, batch.id) >= 150, 300, "150 lines answered",
                   every=0.2)  # fmt: skip
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    answered_before = count_lines(slurm_llm_home, batch.id)
    assert 0 < answered_before < 500
    with router_process(*options) as (_, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        wait_until(lambda: client.batches.retrieve(batch.id).status == "completed", 300,
                   "the next router to finish the batch", every=0.5)  # fmt: skip
        done = client.batches.retrieve(batch.id)
        output = answers(client, done.output_file_id)
        count = completed(client, batch.id)
    ids = [a["custom_id"] for a in output]
    assert len(ids) == 500 and set(ids) == {f"line-{n}" for n in range(500)}
    assert count == 500 and done.error_file_id is None
    for answer in output:  # each answer is its own line's (the model was asked to say n)
        assert answer["response"]["status_code"] == 200


def completed(client: openai.OpenAI, batch_id: str) -> int:
    counts = client.batches.retrieve(batch_id).request_counts
    return counts.completed if counts is not None else 0


def count_lines(home: Path, batch_id: str) -> int:
    path = home / "batches" / batch_id / "output.jsonl"
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def test_slurm_llm_batch_submit_waits_and_writes_the_answers_next_to_the_input(
    smollm2_llamacpp: Deployment, router: RouterThread, tmp_path: Path
) -> None:
    source = tmp_path / "prompts.jsonl"
    source.write_bytes(lines(6))
    said = cli("batch", "submit", str(source), "--url", router.url, "--wait")
    assert "completed 6 answered, 0 failed of 6" in said
    written = tmp_path / "prompts.output.jsonl"
    assert sorted(json.loads(raw)["custom_id"] for raw in written.read_text().splitlines()) == \
        sorted(f"line-{n}" for n in range(6))  # fmt: skip
    batch_id = said.split()[1]
    assert "completed" in cli("batch", "status", batch_id, "--url", router.url)
    assert batch_id in cli("batch", "list", "--url", router.url)
    cli("batch", "results", batch_id, "--url", router.url, "--into", str(tmp_path))
    assert (tmp_path / f"{batch_id}.output.jsonl").read_text() == written.read_text()
    refused = cli("batch", "cancel", batch_id, "--url", router.url, check=False)
    assert "already completed" in refused and "Traceback" not in refused
