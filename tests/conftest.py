"""Shared fixtures: an isolated state directory for the whole session, and engine locations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def slurm_llm_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Registry and deployment state of this test session only; child processes inherit it."""
    home = tmp_path_factory.mktemp("slurm-llm-home")
    previous = os.environ.get("SLURM_LLM_HOME")
    os.environ["SLURM_LLM_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("SLURM_LLM_HOME", None)
    else:
        os.environ["SLURM_LLM_HOME"] = previous
