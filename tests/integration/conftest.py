"""Real engines, started once per session where the tests allow it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_llm import Deployment
from slurm_llm.router import RouterConfig, RouterThread
from tests.integration.helpers import close_clients, deploy_smollm2


@pytest.fixture(scope="session")
def smollm2_llamacpp(slurm_llm_home: Path) -> Iterator[Deployment]:
    """Two real llama.cpp replicas of SmolLM2 on the local executor, shared by read-only tests."""
    with deploy_smollm2("shared-smollm2", replicas=2) as deployment:
        yield deployment


@pytest.fixture(scope="session")
def router(smollm2_llamacpp: Deployment, slurm_llm_home: Path) -> Iterator[RouterThread]:
    """A router in front of the shared replicas, with a small body limit to test it."""
    config = RouterConfig(max_body_bytes=64 * 1024)
    with RouterThread(home=slurm_llm_home, deployment="shared-smollm2", config=config) as running:
        yield running


@pytest.fixture(scope="session", autouse=True)
def _openai_clients_closed() -> Iterator[None]:
    yield
    close_clients()
