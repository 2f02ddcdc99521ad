"""A replica that hangs (its engine stopped with SIGSTOP, alive but silent) is found by deep
probes and skipped, and a stream it breaks off ends with an error instead of hanging."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from slurm_llm import Deployment, EndpointRecord
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread
from tests.integration.helpers import deploy_smollm2, openai_client, post, wait_until

pytestmark = pytest.mark.llamacpp

PROBES = ProbeConfig(interval_s=0.3, timeout_s=0.5, unhealthy_after=2, healthy_after=1)


@pytest.fixture(scope="module")
def frozen_pair(slurm_llm_home: Path) -> Iterator[Deployment]:
    with deploy_smollm2("frozen-pair", replicas=2) as deployment:
        yield deployment


@contextlib.contextmanager
def frozen(record: EndpointRecord) -> Iterator[None]:
    os.kill(record.engine_pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(record.engine_pid, signal.SIGCONT)


@pytest.mark.single_process
def test_a_hung_replica_is_probed_out_and_back_in(
    frozen_pair: Deployment, slurm_llm_home: Path
) -> None:
    config = RouterConfig(probes=PROBES)
    with RouterThread(home=slurm_llm_home, deployment="frozen-pair", config=config) as router:
        hung = frozen_pair.records()[0]
        backend = router.pool.backends[hung.url]
        with frozen(hung):
            wait_until(lambda: backend.probed_down, what="two failed probes to mark it down")
            before = backend.answered
            for n in range(4):
                body = {"model": "smollm2", "prompt": f"{n},", "max_tokens": 2}
                status, _, _ = post(f"{router.url}/v1/completions", body)
                assert status == 200
            assert backend.answered == before and backend.in_flight == 0
        wait_until(lambda: not backend.probed_down, what="one good probe to bring it back")


@pytest.mark.parametrize("failover", ["on", "off"])
@pytest.mark.single_process
def test_a_stream_that_goes_silent_continues_elsewhere_or_ends_with_an_error_event(
    frozen_pair: Deployment, slurm_llm_home: Path, failover: str
) -> None:
    config = RouterConfig(idle_stream_timeout_s=1.0, probes=ProbeConfig(interval_s=0))
    with RouterThread(home=slurm_llm_home, deployment="frozen-pair", config=config) as router:
        records = {r.url: r for r in frozen_pair.records()}
        stream = openai_client(router.url).completions.create(
            model="smollm2", prompt="Write a long story:", max_tokens=60, stream=True,
            extra_body={"ignore_eos": True},  # an early end of text would end the stream cleanly
            extra_headers={"X-Stream-Failover": failover},
        )  # fmt: skip
        chunks = iter(stream)
        next(chunks)
        (serving,) = [b for b in router.pool.backends.values() if b.in_flight]
        started = time.monotonic()
        with frozen(records[serving.url]):
            if failover == "off":
                with pytest.raises(openai.APIError, match="broke off"):
                    for _ in chunks:
                        pass
            else:
                rest = [chunk.choices[0] for chunk in chunks if chunk.choices]
                assert rest[-1].finish_reason == "length"  # all 60 tokens, the rest elsewhere
            assert time.monotonic() - started < 10
            # ejected once, and nothing since: its ejection may have run out by now
            assert serving.failures == 1 and serving.ejected_until > started
