"""Where slurm-llm keeps its state: one directory that every node of the cluster can read.

The default, ``~/.slurm-llm``, is on the shared home filesystem at most sites; set
``SLURM_LLM_HOME`` (or pass ``home=``) to put it on a project or scratch filesystem instead.
"""

from __future__ import annotations

import os
from pathlib import Path


def home_dir(home: Path | None = None) -> Path:
    if home is not None:
        return Path(home).expanduser()
    return Path(os.environ.get("SLURM_LLM_HOME", "~/.slurm-llm")).expanduser()


def registry_dir(home: Path | None = None) -> Path:
    return home_dir(home) / "registry"


def deployments_dir(home: Path | None = None) -> Path:
    return home_dir(home) / "deployments"


def shipped_dir(in_wheel: str, in_checkout: str) -> Path:
    """Files shipped beside the code (presets, law books, the nginx template): in the wheel at
    ``slurm_llm/<in_wheel>`` (pyproject's force-include), in a checkout at
    ``<repo>/<in_checkout>``."""
    package = Path(__file__).parent
    packaged = package / in_wheel
    return packaged if packaged.is_dir() else package.parent / in_checkout


def tomls_by_name(folder: Path) -> dict[str, Path]:
    return {path.stem: path for path in sorted(folder.glob("*.toml"))}
