"""A real SLURM cluster on this machine: ``slurm-llm cluster up|down|status``."""

from slurm_llm._public import present_as_public
from slurm_llm.cluster._cluster import ClusterStatus, LocalCluster
from slurm_llm.cluster._config import ClusterConfig, render
from slurm_llm.cluster._errors import ClusterError

__all__ = [
    "ClusterConfig",
    "ClusterError",
    "ClusterStatus",
    "LocalCluster",
    "render",
]

present_as_public(__name__, globals(), __all__)
