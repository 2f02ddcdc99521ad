"""The local cluster's configuration files, checked against stored references.

A change in what the cluster tells SLURM, munge or MariaDB shows up as a reviewed diff of these
files. Regenerate them with ``SLURM_LLM_UPDATE_REFERENCES=1 pytest tests/unit/cluster``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from slurm_llm.cluster import ClusterConfig, ClusterError, render

REFERENCES = Path(__file__).parent / "reference"
CONFIG = ClusterConfig(root=Path("/srv/cluster"), hostname="login1")
SOCKET = "/srv/cluster/munge/munge.socket"


@pytest.mark.parametrize("name", ["slurm.conf", "gres.conf", "slurmdbd.conf", "my.cnf"])
def test_rendered_file_matches_the_reference(name: str) -> None:
    text = render(CONFIG)[name]
    path = REFERENCES / name
    if os.environ.get("SLURM_LLM_UPDATE_REFERENCES"):
        path.write_text(text)
    assert text == path.read_text()


def test_the_controller_runs_on_this_host_by_its_short_name() -> None:
    assert "SlurmctldHost=login1(127.0.0.1)\n" in render(CONFIG)["slurm.conf"]
    assert "DbdHost=login1\n" in render(CONFIG)["slurmdbd.conf"]


def test_nodes_share_the_host_on_their_own_ports_and_files() -> None:
    conf = render(ClusterConfig(root=Path("/c"), hostname="h", nodes=5, gpus_per_node=2))
    slurm = conf["slurm.conf"]
    assert "NodeName=n[1-5] NodeHostname=h NodeAddr=127.0.0.1 Port=[17001-17005] " in slurm
    assert "Gres=gpu:2 " in slurm
    for line in ("SlurmdSpoolDir=/c/spool/%n", "SlurmdPidFile=/c/run/slurmd-%n.pid"):
        assert f"{line}\n" in slurm
    assert "SlurmdParameters=config_overrides\n" in slurm  # more CPUs than the host has


def test_a_single_node_is_not_a_range() -> None:
    slurm = render(ClusterConfig(root=Path("/c"), hostname="h", nodes=1))["slurm.conf"]
    assert "NodeName=n1 NodeHostname=h NodeAddr=127.0.0.1 Port=17001 " in slurm


def test_fake_gpus_are_device_files_of_each_node() -> None:
    gres = render(ClusterConfig(root=Path("/c"), hostname="h", nodes=2, gpus_per_node=1))
    assert gres["gres.conf"].splitlines()[-3:] == [
        "AutoDetect=off",
        "NodeName=n1 Name=gpu File=/c/gpus/n1/nvidia0",
        "NodeName=n2 Name=gpu File=/c/gpus/n2/nvidia0",
    ]
    assert "Count=" not in gres["gres.conf"]  # 22.05 drops such a line and drains the node


def test_every_daemon_uses_the_private_munge_socket() -> None:
    files = render(CONFIG)
    assert f"AuthInfo=socket={SOCKET},cred_expire=5\n" in files["slurm.conf"]
    assert f"AccountingStoragePass={SOCKET}\n" in files["slurm.conf"]
    assert f"AuthInfo=socket={SOCKET}\n" in files["slurmdbd.conf"]


def test_one_base_port_moves_every_port() -> None:
    moved = ClusterConfig(root=Path("/c"), hostname="h", base_port=26800)
    files = render(moved)
    assert "SlurmctldPort=26817\n" in files["slurm.conf"]
    assert "AccountingStoragePort=26819\n" in files["slurm.conf"]
    assert "Port=[27001-27003]" in files["slurm.conf"]
    assert "DbdPort=26819\n" in files["slurmdbd.conf"]
    assert "StoragePort=26806\n" in files["slurmdbd.conf"]
    assert "port=26806\n" in files["my.cnf"]
    assert "16" not in "".join(str(p) for p in moved.node_ports)


def test_settings_that_make_a_one_host_cluster_work() -> None:
    slurm = render(CONFIG)["slurm.conf"]
    for line in (
        "ProctrackType=proctrack/linuxproc",  # no cgroups here
        "TaskPlugin=task/none",
        "DefMemPerCPU=1024",  # else a job without --mem takes the whole node
        "SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=5",
        "ReturnToService=2",  # restarted nodes come back by themselves
        "MpiDefault=none",
        "MailProg=/bin/true",
        "AccountingStorageType=accounting_storage/slurmdbd",  # submitit reads states from sacct
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        "PartitionName=gpu Nodes=ALL Default=NO MaxTime=INFINITE State=UP",
    ):
        assert f"{line}\n" in slurm


def test_the_gpu_partition_can_be_left_out() -> None:
    slurm = render(ClusterConfig(root=Path("/c"), hostname="h", gpu_partition=None))["slurm.conf"]
    assert "PartitionName=gpu" not in slurm


def test_mariadb_listens_on_loopback_only() -> None:
    my_cnf = render(CONFIG)["my.cnf"]
    assert "bind-address=127.0.0.1\n" in my_cnf
    assert "datadir=/srv/cluster/mysql\n" in my_cnf


@pytest.mark.parametrize("field", ["nodes", "gpus_per_node", "cpus_per_node", "memory_mb"])
def test_impossible_sizes_are_refused(field: str) -> None:
    sizes: dict[str, Any] = {field: 0}
    with pytest.raises(ClusterError, match=field):
        ClusterConfig(root=Path("/c"), **sizes)


def test_the_shape_of_the_last_up_is_remembered(tmp_path: Path) -> None:
    ClusterConfig(root=tmp_path, nodes=5, gpus_per_node=2).save_shape()
    again = ClusterConfig(root=tmp_path).with_saved_shape()
    assert (again.nodes, again.gpus_per_node, again.cpus_per_node) == (5, 2, 8)
    assert ClusterConfig(root=tmp_path).with_saved_shape(nodes=2, gpus_per_node=None).shape() == {
        **again.shape(),
        "nodes": 2,
    }


def test_without_a_saved_shape_the_defaults_hold(tmp_path: Path) -> None:
    assert ClusterConfig(root=tmp_path).with_saved_shape() == ClusterConfig(root=tmp_path)
