"""``slurm-llm cluster``: a real SLURM cluster on this machine. Its GPUs are fakes (GRES whose
device files point at /dev/null) that SLURM schedules, limits and hands to jobs like real ones."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

from slurm_llm.cluster import ClusterError, LocalCluster

pytestmark = pytest.mark.slurm

DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "slurmstepd")


def sbatch(*args: str) -> subprocess.CompletedProcess[str]:
    argv = ["sbatch", "--parsable", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def accounting(job_id: str, timeout: float = 60) -> tuple[str, str]:
    """State and exit code of an ended job, as sacct (slurmdbd) reports them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["sacct", "--noheader", "--parsable2", "--allocations", "--jobs", job_id,
             "--format=State,ExitCode"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if out and out.split("|")[0] not in ("PENDING", "RUNNING", "COMPLETING"):
            state, code = out.split("|")
            return state, code
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end within {timeout} s")


def daemons_of(cluster: LocalCluster) -> list[str]:
    """Every process of the cluster, found through /proc rather than through its pid files."""
    marks = (f"SLURM_CONF={cluster.env()['SLURM_CONF']}".encode(), str(cluster.root).encode())
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except (OSError, NotADirectoryError):
            continue
        program = os.path.basename(argv.split(b"\0")[0].decode(errors="replace"))
        if program.startswith(DAEMONS) and any(m in argv or m in environ for m in marks):
            found.append(f"{entry.name} {program}")
    return found


def test_every_node_is_idle_and_its_name_resolves(local_slurm: LocalCluster) -> None:
    status = local_slurm.status()
    assert status.running
    assert status.nodes == {"n1": "idle", "n2": "idle", "n3": "idle"}
    assert socket.gethostbyname("n2") == "127.0.1.2"


def test_a_gpu_job_gets_two_gpus_on_a_named_node(local_slurm: LocalCluster, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    job = sbatch(
        "--gres=gpu:2", f"--output={out}", "--wrap", "echo $(hostname) $CUDA_VISIBLE_DEVICES"
    )
    assert job.returncode == 0, job.stderr
    assert accounting(job.stdout.strip()) == ("COMPLETED", "0:0")
    node, gpus = out.read_text().split()
    assert node in {"n1", "n2", "n3"}  # each slurmd runs in a UTS namespace of its own
    assert len(set(gpus.split(","))) == 2
    local_slurm.wait_idle(timeout=30)  # the finished job gave its node back


def test_more_gpus_than_a_node_has_is_refused(local_slurm: LocalCluster) -> None:
    job = sbatch("--gres=gpu:5", "--wrap", "true")
    assert job.returncode != 0
    assert "Requested node configuration is not available" in job.stderr


def test_accounting_records_how_a_job_ended(local_slurm: LocalCluster) -> None:
    job = sbatch("--output=/dev/null", "--wrap", "exit 3")
    assert job.returncode == 0, job.stderr
    assert accounting(job.stdout.strip()) == ("FAILED", "3:0")


def test_submitit_runs_functions_on_the_cluster(local_slurm: LocalCluster, tmp_path: Path) -> None:
    executor = submitit.SlurmExecutor(folder=tmp_path)
    executor.update_parameters(time=2, cpus_per_task=1, mem="1GB")
    job = executor.submit(sum, [1, 2, 3])
    assert job.result() == 6
    # submitit reads states from sacct, which learns of an ended job about a second later.
    deadline = time.monotonic() + 10
    while job.get_info(mode="force").get("State") != "COMPLETED":
        assert time.monotonic() < deadline, job.get_info(mode="force")
        time.sleep(0.2)
    executor.update_parameters(gres="gpu:3")
    gpus = executor.submit(os.getenv, "CUDA_VISIBLE_DEVICES").result()
    assert gpus is not None
    assert len(gpus.split(",")) == 3


def test_up_on_a_running_cluster_only_checks_it(local_slurm: LocalCluster) -> None:
    pids = local_slurm.status().daemons
    started = time.perf_counter()
    local_slurm.up()
    assert time.perf_counter() - started < 2
    assert local_slurm.status().daemons == pids


def test_up_with_another_shape_while_running_is_refused(local_slurm: LocalCluster) -> None:
    with pytest.raises(ClusterError, match="stop it first"):
        LocalCluster(local_slurm.root, nodes=2).up()


def test_down_stops_every_daemon_and_job_and_up_brings_the_cluster_back(
    local_slurm: LocalCluster,
) -> None:
    job = sbatch("--output=/dev/null", "--wrap", "sleep 300")
    assert job.returncode == 0, job.stderr
    assert daemons_of(local_slurm)
    local_slurm.down()
    assert daemons_of(local_slurm) == []
    assert str(local_slurm.root) not in Path("/etc/hosts").read_text()
    local_slurm.down()  # stopped already: nothing to do
    local_slurm.up()
    assert local_slurm.status().ready
    assert accounting(job.stdout.strip())[0] == "CANCELLED"


def test_the_cli_reports_the_cluster(local_slurm: LocalCluster) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "slurm_llm", "cluster", "status", "--dir", str(local_slurm.root)],
        capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "200"},
    ).stdout  # fmt: skip
    assert out.count("idle") == 3
    assert f"export SLURM_CONF={local_slurm.env()['SLURM_CONF']}" in out
