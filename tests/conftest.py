"""Shared fixtures: an isolated state directory for the whole session, and engine locations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_llm.cluster import LocalCluster
from slurm_llm.router._config import default_workers

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With ``SLURM_LLM_ROUTER_WORKERS`` above 1 every router a test starts is several
    processes (the suite's second pass over the router's tests, ``scripts/test.sh``): a test
    that looks into one router process's state has nothing to look at, and is skipped."""
    if default_workers() > 1:
        skip = pytest.mark.skip(reason="looks at one router process's state")
        for item in items:
            if item.get_closest_marker("single_process"):
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def slurm_llm_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Registry, deployment state and usage records of this test session only, for every test
    (a router writes usage records wherever it runs); child processes inherit it."""
    home = tmp_path_factory.mktemp("slurm-llm-home")
    previous = os.environ.get("SLURM_LLM_HOME")
    os.environ["SLURM_LLM_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("SLURM_LLM_HOME", None)
    else:
        os.environ["SLURM_LLM_HOME"] = previous


@pytest.fixture(scope="session")
def local_slurm() -> Iterator[LocalCluster]:
    """A real SLURM cluster on this machine (``slurm-llm cluster up``), started once per session
    with fresh state and stopped at its end; SLURM's commands and submitit find it through the
    environment.

    It lives in the repository's .cache/ (or $SLURM_LLM_TEST_CLUSTER_DIR) on ports of its own,
    so a cluster that a user started with the defaults keeps running undisturbed. Its state and
    accounting are wiped at the start (a few seconds), so that no job, drained node or job id
    of an earlier session can leak into this one.
    """
    root = Path(os.environ.get("SLURM_LLM_TEST_CLUSTER_DIR", REPO / ".cache" / "test-cluster"))
    cluster = LocalCluster(root, base_port=15800)
    cluster.up(clean=True)
    previous = {key: os.environ.get(key) for key in cluster.env()}
    os.environ.update(cluster.env())
    yield cluster
    cluster.down(clean=True)
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
