"""A batch from a key with a rate limit is work to get through: its items over the limit wait
for the Retry-After instead of failing. A stand-in OpenAI server (not an engine) answers, and
the minute window is shortened to half a second so the wait is short."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from slurm_llm._api_keys import KeysFile
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread, _limits
from tests.integration.helpers import post
from tests.unit.router.test_fault_attribution import StandInReplica


@pytest.mark.single_process  # the shortened window is patched into this process only
def test_batch_items_over_a_key_s_rate_wait_and_all_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_limits, "WINDOW_S", 0.5)
    keys = KeysFile(tmp_path / "keys.toml")
    key = keys.add("pipeline", requests_per_minute=2)  # per (shortened) window
    config = RouterConfig(probes=ProbeConfig(interval_s=0), keys_file=keys.path)
    with (
        StandInReplica() as replica,
        RouterThread(static=[("m", replica.url)], config=config) as router,
    ):
        began = time.monotonic()
        answer = post(f"{router.url}/v1/batch", {
            "model": "m", "endpoint": "/v1/completions", "defaults": {"max_tokens": 1},
            "requests": [{"prompt": str(n)} for n in range(5)],
        }, {"X-API-Key": key})  # fmt: skip
    assert answer.status == 200 and answer.body["succeeded"] == 5, answer.body
    assert time.monotonic() - began >= 1.0  # 5 items at 2 per half second: two waits
    assert replica.requests == 5
