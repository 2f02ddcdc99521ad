"""A real SLURM cluster on this machine: ``slurm-llm cluster up|down|status``."""

from slurm_llm.cluster._cli import add_cluster_commands
from slurm_llm.cluster._config import ClusterConfig, render
from slurm_llm.cluster._daemons import ClusterError, ClusterStatus, LocalCluster

__all__ = [
    "ClusterConfig",
    "ClusterError",
    "ClusterStatus",
    "LocalCluster",
    "add_cluster_commands",
    "render",
]
