"""The router and nginx as jobs of their own: each publishes its address once it serves, and
cleans up when stopped; on the local executor and on the real SLURM cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_llm import Deployment, _debian
from slurm_llm.cluster import LocalCluster
from slurm_llm.jobs._front_end_job import address_path
from slurm_llm.nginx import launch_nginx
from slurm_llm.router import launch_router
from tests.integration.helpers import openai_client

pytestmark = pytest.mark.llamacpp


def serves_and_cleans_up(executor: str, name: str, home: Path, kind: str = "router") -> None:
    launch = launch_router if kind == "router" else launch_nginx
    with launch("shared-smollm2", name=name, executor=executor) as job:
        url = job.wait_url(timeout=120)
        assert address_path(name).exists()
        base = url if kind == "router" else f"{url}/smollm2"
        reply = openai_client(base).completions.create(
            model="smollm2", prompt="1, 2,", max_tokens=2
        )
        assert reply.choices[0].text
    assert job.job.done()
    assert not address_path(name).exists(), "a stopped router withdraws its address"


def test_a_local_router_job(smollm2_llamacpp: Deployment, slurm_llm_home: Path) -> None:
    serves_and_cleans_up("local", "local-router", slurm_llm_home)


@pytest.mark.slurm
def test_a_router_job_on_slurm(
    local_slurm: LocalCluster, smollm2_llamacpp: Deployment, slurm_llm_home: Path
) -> None:
    serves_and_cleans_up("slurm", "slurm-router", slurm_llm_home)


def remove_nginx() -> None:
    """Debian's nginx packages, removed, so that a job meets a machine without nginx."""
    listed = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\n", "nginx*"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    installed = [line.split()[1] for line in listed.splitlines() if line.startswith("ii")]
    if installed:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "remove", "-y", "-qq", *installed], env=env, check=True)
    found = shutil.which("nginx", path=_debian.SEARCH_PATH)
    assert found is None, f"{found} is not from a Debian package; cannot test a first install"


# Before the other nginx tests, which would install nginx themselves.
@pytest.mark.nginx
def test_an_nginx_job_installs_nginx_and_its_first_address_serves(
    smollm2_llamacpp: Deployment, slurm_llm_home: Path
) -> None:
    """On a machine without nginx, the job installs it, starts it, and only then publishes:
    the first answer of ``wait_url`` takes a completion, without a retry."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("removing and installing nginx needs root and apt-get")
    remove_nginx()
    with launch_nginx("shared-smollm2", name="fresh-nginx", executor="local") as job:
        url = job.wait_url(timeout=300)
        assert shutil.which("nginx", path=_debian.SEARCH_PATH), "the job installed nginx"
        reply = openai_client(f"{url}/smollm2").completions.create(
            model="smollm2", prompt="1, 2,", max_tokens=2
        )
        assert reply.choices[0].text
    assert not address_path("fresh-nginx").exists()


@pytest.mark.nginx
def test_a_local_nginx_job(smollm2_llamacpp: Deployment, slurm_llm_home: Path) -> None:
    serves_and_cleans_up("local", "local-nginx", slurm_llm_home, kind="nginx")


@pytest.mark.slurm
@pytest.mark.nginx
def test_an_nginx_job_on_slurm(
    local_slurm: LocalCluster, smollm2_llamacpp: Deployment, slurm_llm_home: Path
) -> None:
    serves_and_cleans_up("slurm", "slurm-nginx", slurm_llm_home, kind="nginx")


def test_a_bad_key_file_is_refused_before_anything_is_submitted(slurm_llm_home: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "slurm_llm", "router", "--submit", "--executor", "local",
         "--name", "broken", "--api-keys-file", "/nonexistent/keys"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot read the API key file /nonexistent/keys" in result.stderr
