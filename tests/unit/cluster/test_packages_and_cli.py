"""What a user sees before any daemon starts: the packages' install command, and the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from slurm_llm.cluster import ClusterError, LocalCluster, _packages
from slurm_llm.cluster._cli import add_cluster_commands, cmd_down, cmd_status, cmd_up


def test_without_root_the_error_names_the_packages_and_the_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_packages, "missing_programs", lambda: ["slurmctld", "munged"])
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(ClusterError) as caught:
        _packages.ensure_installed()
    message = str(caught.value)
    assert "slurmctld, munged not found" in message
    assert "apt-get update && apt-get install -y -qq --no-install-recommends" in message
    for package in ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"):
        assert package in message


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_cluster_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_the_cluster_commands_parse() -> None:
    up = parse("cluster", "up", "--nodes", "5", "--gpus-per-node", "2", "--clean", "--dir", "/c")
    assert (up.handler, up.nodes, up.gpus_per_node, up.clean, up.dir) == (
        cmd_up, 5, 2, True, "/c",
    )  # fmt: skip
    assert parse("cluster", "down", "--clean").handler is cmd_down
    assert parse("cluster", "status").handler is cmd_status


def test_status_and_down_find_the_shape_the_last_up_chose(tmp_path: Path) -> None:
    LocalCluster(tmp_path, nodes=5, base_port=20000).config.save_shape()
    cluster = LocalCluster(tmp_path)
    assert cluster.config.node_names == ["n1", "n2", "n3", "n4", "n5"]
    assert cluster.config.ctld_port == 20017
    assert cluster.env() == {"SLURM_CONF": str(tmp_path.resolve() / "etc" / "slurm.conf")}
