"""Debian's own SLURM, munge and MariaDB, installed on first use.

The packages are installed with ``--no-install-recommends``: the recommended extras (mail
servers, docs, X libraries) take minutes on a small CI machine and the cluster needs none.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from slurm_llm.cluster._errors import ClusterError

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
# One program from each package (and the client tools the cluster itself calls).
PROGRAMS = (
    "slurmctld", "slurmd", "sinfo", "squeue", "scancel", "munged", "slurmdbd", "mariadbd",
    "mariadb", "mariadb-install-db", "unshare", "setsid",
)  # fmt: skip
# Daemons live in sbin, which is not on an ordinary user's PATH.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
INSTALL = ("apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES)


def missing_programs() -> list[str]:
    return [name for name in PROGRAMS if shutil.which(name, path=SEARCH_PATH) is None]


def ensure_installed() -> None:
    """Installs the packages as root; anyone else gets the command to run."""
    missing = missing_programs()
    if not missing:
        return
    command = f"apt-get update && {' '.join(INSTALL)}"
    if os.geteuid() != 0:
        raise ClusterError(
            f"the local cluster needs Debian's packages {', '.join(PACKAGES)} "
            f"({', '.join(missing)} not found); install them as root:\n  sudo sh -c '{command}'"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], list(INSTALL)):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ClusterError(
                f"{' '.join(argv)} failed (exit {done.returncode}):\n{done.stderr[-2000:]}"
            )
    if still := missing_programs():
        raise ClusterError(f"installed {', '.join(PACKAGES)}, yet {', '.join(still)} not found")
