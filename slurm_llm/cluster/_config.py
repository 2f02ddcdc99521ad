"""The local cluster's configuration files, rendered from templates.

Every fact in the templates was needed to make Debian's Slurm 22.05 run several nodes on one
host as root without systemd or cgroups (see the project's notes): the controller's host must be
``hostname -s``, nodes share the host with their own ports and ``%n`` paths, fake GPUs must be
character devices, and the private munge socket must be named wherever a daemon authenticates.
Rendering is a pure function of :class:`ClusterConfig`, so tests compare it with stored references.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2

from slurm_llm.cluster._errors import ClusterError

TEMPLATES = ("slurm.conf", "gres.conf", "slurmdbd.conf", "my.cnf")
# What `up` remembers of a user's choices, so `status` and `down` without options still find
# every node that an earlier `up --nodes 5` started.
SHAPE = ("nodes", "gpus_per_node", "cpus_per_node", "memory_mb", "base_port")
SHAPE_FILE = "cluster.json"


def default_root() -> Path:
    """One directory holds everything, so removing it (after ``down``) leaves no trace."""
    return Path(os.environ.get("SLURM_LLM_CLUSTER_DIR", "~/.slurm-llm/cluster")).expanduser()


def short_hostname() -> str:
    """What ``hostname -s`` prints: slurmctld refuses to start unless SlurmctldHost equals it."""
    return socket.gethostname().split(".")[0]


@dataclass(frozen=True)
class ClusterConfig:
    root: Path
    nodes: int = 3
    gpus_per_node: int = 4
    # More than this machine has: SlurmdParameters=config_overrides lets nodes declare it, and
    # jobs sized for real nodes then fit.
    cpus_per_node: int = 8
    memory_mb: int = 16000
    # Every port is base_port + a fixed offset: a second cluster on the host needs another base.
    base_port: int = 16800
    hostname: str = field(default_factory=short_hostname)
    cluster_name: str = "slurmllm"
    partition: str = "debug"
    # Real sites often name their GPU partition "gpu"; specs written for one then run here as-is.
    gpu_partition: str | None = "gpu"

    def __post_init__(self) -> None:
        for name in SHAPE:
            if getattr(self, name) < 1:
                raise ClusterError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.base_port + 200 + self.nodes > 65535:
            raise ClusterError(f"base_port {self.base_port} leaves no room for the node ports")

    def shape(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in SHAPE}

    def save_shape(self) -> None:
        (self.root / SHAPE_FILE).write_text(json.dumps(self.shape(), indent=2) + "\n")

    def with_saved_shape(self, **chosen: int | None) -> ClusterConfig:
        """The shape saved by the last ``up`` in this root, overridden by what is ``chosen``."""
        try:
            saved: dict[str, Any] = json.loads((self.root / SHAPE_FILE).read_text())
        except (FileNotFoundError, ValueError):
            saved = {}
        values = {name: saved[name] for name in SHAPE if isinstance(saved.get(name), int)}
        values.update({name: value for name, value in chosen.items() if value is not None})
        return replace(self, **values)

    @property
    def node_names(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.nodes + 1)]

    @property
    def ctld_port(self) -> int:
        return self.base_port + 17  # like SLURM's default 6817

    @property
    def dbd_port(self) -> int:
        return self.base_port + 19  # like SLURM's default 6819

    @property
    def mysql_port(self) -> int:
        return self.base_port + 6

    @property
    def node_ports(self) -> list[int]:
        first = self.base_port + 201
        return list(range(first, first + self.nodes))

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def slurm_conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def my_cnf(self) -> Path:
        return self.etc / "my.cnf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def gpu_devices(self, node: str) -> list[Path]:
        return [self.root / "gpus" / node / f"nvidia{i}" for i in range(self.gpus_per_node)]


def _ranged(prefix: str, first: int, last: int) -> str:
    """SLURM's host-list syntax: ``n[1-3]``, or plain ``n1`` for a single item."""
    return f"{prefix}{first}" if first == last else f"{prefix}[{first}-{last}]"


def render(config: ClusterConfig) -> dict[str, str]:
    """File name -> contents, for every file under ``etc/``."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("slurm_llm.cluster", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        autoescape=False,
    )
    ports = config.node_ports
    variables = {
        "config": config,
        "node_range": _ranged("n", 1, config.nodes),
        "port_range": _ranged("", ports[0], ports[-1]),
        "gpu_range": _ranged("nvidia", 0, config.gpus_per_node - 1),
    }
    return {name: environment.get_template(f"{name}.j2").render(variables) for name in TEMPLATES}
