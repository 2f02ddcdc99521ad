"""Debian's own SLURM, munge and MariaDB, installed on first use (see ``slurm_llm._debian``)."""

from __future__ import annotations

from slurm_llm import _debian
from slurm_llm.cluster._errors import ClusterError

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
# One program from each package (and the client tools the cluster itself calls).
PROGRAMS = (
    "slurmctld", "slurmd", "sinfo", "squeue", "scancel", "munged", "slurmdbd", "mariadbd",
    "mariadb", "mariadb-install-db", "unshare", "setsid",
)  # fmt: skip


def missing_programs() -> list[str]:
    return _debian.missing_programs(PROGRAMS)


def ensure_installed() -> None:
    """Installs the packages as root; anyone else gets the command to run."""
    _debian.ensure_packages(
        PACKAGES, PROGRAMS, ClusterError, "the local cluster", find_missing=missing_programs
    )
