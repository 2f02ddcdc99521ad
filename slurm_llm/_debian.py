"""Debian packages that slurm-llm needs on the machine, installed on first use.

Some parts run real system daemons rather than Python code (the local SLURM cluster, nginx).
Asking every user to read an install guide first is the usual reason such a feature goes unused,
so they install what they need when first started: as root with apt-get directly, and for anyone
else an error that gives the exact command to run. Packages are installed with
``--no-install-recommends``: the recommended extras (mail servers, docs, X libraries) take minutes
on a small CI machine and none of them are needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence

# Daemons live in sbin, which is not on an ordinary user's PATH.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def missing_programs(programs: Sequence[str], search_path: str = SEARCH_PATH) -> list[str]:
    """The programs, by name, that are not on ``search_path``."""
    return [name for name in programs if shutil.which(name, path=search_path) is None]


def install_argv(packages: Sequence[str]) -> list[str]:
    return ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]


def install_command(packages: Sequence[str]) -> str:
    """The shell command that installs ``packages``, for a user to copy."""
    return f"apt-get update && {' '.join(install_argv(packages))}"


def ensure_packages(
    packages: Sequence[str],
    programs: Sequence[str],
    error_type: Callable[[str], Exception],
    purpose: str,
    find_missing: Callable[[], list[str]] | None = None,
) -> None:
    """Installs ``packages`` unless every one of ``programs`` is already there.

    ``purpose`` starts the error message ("the local cluster needs ..."); errors are raised as
    ``error_type`` so each caller's users see the error type they already handle.
    ``find_missing`` replaces the program check (tests use it).
    """
    check = find_missing or (lambda: missing_programs(programs))
    missing = check()
    if not missing:
        return
    if os.geteuid() != 0:
        raise error_type(
            f"{purpose} needs Debian's packages {', '.join(packages)} "
            f"({', '.join(missing)} not found); install them as root:\n"
            f"  sudo sh -c '{install_command(packages)}'"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], install_argv(packages)):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise error_type(
                f"{' '.join(argv)} failed (exit {done.returncode}):\n{done.stderr[-2000:]}"
            )
    if still := check():
        raise error_type(f"installed {', '.join(packages)}, yet {', '.join(still)} not found")
