"""Real engines, started once per session where the tests allow it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_llm import Deployment, ModelSpec, deploy


@pytest.fixture(scope="session")
def smollm2_llamacpp(slurm_llm_home: Path) -> Iterator[Deployment]:
    """Two real llama.cpp replicas of SmolLM2 on the local executor, shared by read-only tests."""
    spec = ModelSpec.preset("smollm2-135m")
    with deploy(spec, replicas=2, executor="local", name="shared-smollm2", progress=False) as d:
        yield d
