"""A real SLURM cluster on this machine: ``slurm-llm cluster up|down|status``."""

from slurm_llm.cluster._cli import add_cluster_commands
from slurm_llm.cluster._cluster import ClusterStatus, LocalCluster
from slurm_llm.cluster._config import ClusterConfig, render
from slurm_llm.cluster._errors import ClusterError

__all__ = [
    "ClusterConfig",
    "ClusterError",
    "ClusterStatus",
    "LocalCluster",
    "add_cluster_commands",
    "render",
]
