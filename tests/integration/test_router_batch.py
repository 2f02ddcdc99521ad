"""``/v1/batch``: many prompts in one call, answered in order, one bad item costing nothing."""

from __future__ import annotations

import pytest

from slurm_llm.router import RouterThread
from tests.integration.helpers import post

pytestmark = pytest.mark.llamacpp


@pytest.mark.single_process
def test_a_batch_comes_back_in_order_with_bad_items_reported_in_place(router: RouterThread) -> None:
    before = {b.url: b.answered for b in router.pool.backends.values()}
    requests: list[object] = [{"prompt": f"{n}, {n + 1},"} for n in range(10)]
    requests[3] = {"max_tokens": 2}  # no prompt
    requests[6] = {"prompt": "x", "model": "gpt-9"}
    requests[8] = "not an object"
    status, body, _ = post(
        f"{router.url}/v1/batch",
        {"model": "smollm2", "endpoint": "/v1/completions", "defaults": {"max_tokens": 3},
         "requests": requests},
    )  # fmt: skip
    assert status == 200
    results = body["results"]
    assert [r["index"] for r in results] == list(range(10))
    assert (body["succeeded"], body["failed"]) == (7, 3)
    assert results[3]["status"] == 400 and "'prompt' is required" in results[3]["error"]["message"]
    assert results[6]["status"] == 404 and "'gpt-9' is not served" in results[6]["error"]["message"]
    assert results[8]["status"] == 400 and "must be a JSON object" in results[8]["error"]["message"]
    good = [r for r in results if r["status"] == 200]
    assert all(r["response"]["choices"][0]["text"] for r in good)
    after = {b.url: b.answered - before[b.url] for b in router.pool.backends.values()}
    assert min(after.values()) >= 1, "the batch ran on both replicas"


def test_chat_batches_are_the_default(router: RouterThread) -> None:
    item = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    status, body, _ = post(f"{router.url}/v1/batch", {"model": "smollm2", "requests": [item] * 3})
    assert status == 200 and body["succeeded"] == 3
    assert all(r["response"]["object"] == "chat.completion" for r in body["results"])


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({"model": "smollm2"}, "the field 'requests' is required"),
        ({"model": "smollm2", "requests": []}, "invalid 'requests': List should have at least 1"),
        (
            {"requests": [{}], "endpoint": "/v1/embeddings"},
            "invalid 'endpoint': Input should be '/v1/chat/completions' or '/v1/completions'",
        ),
        ({"requests": [{}], "defaults": [1]}, "invalid 'defaults': Input should be a valid dict"),
    ],
)
def test_malformed_batches_get_400(
    router: RouterThread, batch: dict[str, object], message: str
) -> None:
    status, body, _ = post(f"{router.url}/v1/batch", batch)
    assert status == 400 and message in body["error"]["message"]


def test_streaming_is_refused_per_item(router: RouterThread) -> None:
    batch = {"model": "smollm2", "endpoint": "/v1/completions",
             "requests": [{"prompt": "x", "stream": True}]}  # fmt: skip
    status, body, _ = post(f"{router.url}/v1/batch", batch)
    assert status == 200
    assert "cannot be streamed" in body["results"][0]["error"]["message"]
