"""``slurm-llm cluster up|down|status``: the local cluster from a shell."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from slurm_llm.cluster._cluster import ClusterStatus, LocalCluster

console = Console()
COLOURS = {"idle": "green", "mixed": "green", "allocated": "yellow", "completing": "yellow"}


def _cluster(args: argparse.Namespace) -> LocalCluster:
    return LocalCluster(
        Path(args.dir) if args.dir else None,
        nodes=getattr(args, "nodes", None),
        gpus_per_node=getattr(args, "gpus_per_node", None),
        base_port=getattr(args, "base_port", None),
    )


def cmd_up(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    started = time.perf_counter()
    cluster.up(clean=args.clean, timeout=args.timeout)
    took = time.perf_counter() - started
    print_status(cluster, cluster.status())
    console.print(
        f"Up in {took:.1f} s. SLURM's commands (and slurm-llm) find it through SLURM_CONF:\n"
        f"  export SLURM_CONF={cluster.env()['SLURM_CONF']}\n"
        f"Stop it with: slurm-llm cluster down --dir {cluster.root}",
        highlight=False,
    )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    started = time.perf_counter()
    cluster.down(clean=args.clean)
    wiped = " and wiped its state and accounting" if args.clean else ""
    console.print(
        f"Stopped the cluster in {cluster.root}{wiped} ({time.perf_counter() - started:.1f} s).",
        highlight=False,
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    status = cluster.status()
    print_status(cluster, status)
    if status.running:
        console.print(f"export SLURM_CONF={cluster.env()['SLURM_CONF']}", highlight=False)
    return 0


def print_status(cluster: LocalCluster, status: ClusterStatus) -> None:
    config = cluster.config
    console.print(
        f"Local SLURM cluster in {cluster.root}: {config.nodes} nodes, each with "
        f"{config.gpus_per_node} fake GPUs, {config.cpus_per_node} CPUs, {config.memory_mb} MB",
        highlight=False,
    )
    table = Table()
    for column in ("daemon / node", "state", "pid"):
        table.add_column(column)
    for name, pid in status.daemons.items():
        table.add_row(name, "running" if pid else "[red]stopped[/]", str(pid or ""))
    for name, state in status.nodes.items():
        table.add_row(f"node {name}", f"[{COLOURS.get(state, 'red')}]{state}[/]", "")
    console.print(table)


def add_cluster_commands(commands: Any) -> None:
    """Adds ``cluster`` to the main CLI's sub-commands (the result of ``add_subparsers``)."""
    cluster = commands.add_parser(
        "cluster",
        help="Run a real SLURM cluster on this machine (to try slurm-llm, and for tests).",
        description="munge, MariaDB + slurmdbd, slurmctld and several slurmd with fake GPUs, "
        "all under one directory ($SLURM_LLM_CLUSTER_DIR or ~/.slurm-llm/cluster). Needs root.",
    )
    actions = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start it (a no-op when it runs) and wait for its nodes")
    up.add_argument("--nodes", type=int, default=None, help="default 3, or as last started")
    up.add_argument("--gpus-per-node", type=int, default=None, help="default 4")
    up.add_argument("--base-port", type=int, default=None, help="default 16800; ports above it")
    up.add_argument("--clean", action="store_true", help="wipe state and accounting first")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for it")
    up.set_defaults(handler=cmd_up)
    down = actions.add_parser("down", help="stop it and its jobs (a no-op when stopped)")
    down.add_argument("--clean", action="store_true", help="also wipe state and accounting")
    down.set_defaults(handler=cmd_down)
    status = actions.add_parser("status", help="its daemons and nodes")
    status.set_defaults(handler=cmd_status)
    for parser in (up, down, status):
        parser.add_argument("--dir", default=None, help="its directory")
