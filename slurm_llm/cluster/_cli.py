"""``slurm-llm cluster``: start, inspect and stop the local SLURM cluster."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from slurm_llm.cluster._daemons import ClusterStatus, LocalCluster

console = Console()


def _cluster(args: argparse.Namespace) -> LocalCluster:
    options: dict[str, Any] = {"root": Path(args.dir) if args.dir else None}
    if getattr(args, "nodes", None):
        options.update(nodes=args.nodes, gpus_per_node=args.gpus_per_node)
    return LocalCluster(**options)


def cmd_up(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    started = time.perf_counter()
    status = cluster.up(clean=args.clean)
    print_status(cluster, status)
    console.print(f"Up in {time.perf_counter() - started:.1f} s. Point SLURM's commands at it:")
    console.print(f"  export SLURM_CONF={cluster.env()['SLURM_CONF']}", highlight=False)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    cluster.down(clean=args.clean)
    console.print(
        f"Stopped the cluster in {cluster.root}" + (" and wiped its state" if args.clean else "")
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    print_status(cluster, cluster.status())
    return 0


def print_status(cluster: LocalCluster, status: ClusterStatus) -> None:
    table = Table(title=f"Local SLURM cluster in {cluster.root}")
    table.add_column("daemon / node")
    table.add_column("state")
    for name, pid in status.daemons.items():
        table.add_row(name, f"running (pid {pid})" if pid else "[red]stopped[/]")
    for name, state in status.nodes.items():
        table.add_row(f"node {name}", state)
    console.print(table)


def add_cluster_commands(commands: Any) -> None:
    """Adds ``cluster up|down|status`` to the main CLI's sub-commands."""
    cluster = commands.add_parser(
        "cluster",
        help="Run a real SLURM cluster on this machine (for trying slurm-llm, and for tests).",
        description="munge, MariaDB + slurmdbd, slurmctld and several slurmd with fake GPUs, "
        "all under one directory ($SLURM_LLM_CLUSTER_DIR or ~/.slurm-llm/cluster).",
    )
    actions = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start it (idempotent) and wait until nodes are idle")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--gpus-per-node", type=int, default=4)
    up.add_argument("--clean", action="store_true", help="wipe state and accounting first")
    up.set_defaults(handler=cmd_up)
    down = actions.add_parser("down", help="stop what it started")
    down.add_argument("--clean", action="store_true", help="also wipe state and accounting")
    down.set_defaults(handler=cmd_down)
    status = actions.add_parser("status", help="its daemons and nodes")
    status.set_defaults(handler=cmd_status)
    for parser in (up, down, status):
        parser.add_argument("--dir", default=None, help="state directory")
