"""The local cluster's configuration files, rendered from templates.

Every fact in the templates was needed to make Debian's Slurm 22.05 run several nodes on one
host as root without systemd or cgroups (see the project's notes): the controller's host must be
``hostname -s``, nodes share the host with their own ports and ``%n`` paths, fake GPUs must be
character devices, and the private munge socket must be named wherever a daemon authenticates.
Rendering is pure, so tests compare the output with stored references.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import jinja2

TEMPLATES = ("slurm.conf", "gres.conf", "slurmdbd.conf", "my.cnf")


def default_root() -> Path:
    return Path(os.environ.get("SLURM_LLM_CLUSTER_DIR", "~/.slurm-llm/cluster")).expanduser()


@dataclass(frozen=True)
class ClusterConfig:
    root: Path
    nodes: int = 3
    gpus_per_node: int = 4
    cpus_per_node: int = 8
    memory_mb: int = 16000
    cluster_name: str = "slurmllm"
    partition: str = "debug"
    hostname: str = ""
    ctld_port: int = 16817
    dbd_port: int = 16819
    mysql_port: int = 16306
    first_node_port: int = 17001

    def __post_init__(self) -> None:
        if not self.hostname:  # SlurmctldHost must be exactly `hostname -s`
            object.__setattr__(self, "hostname", socket.gethostname().split(".")[0])

    @property
    def node_names(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.nodes + 1)]

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def slurm_conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def variables(self) -> dict[str, object]:
        last = self.first_node_port + self.nodes - 1
        return {
            "root": self.root,
            "cluster_name": self.cluster_name,
            "hostname": self.hostname,
            "ctld_port": self.ctld_port,
            "dbd_port": self.dbd_port,
            "mysql_port": self.mysql_port,
            "munge_socket": self.munge_socket,
            "nodes": self.node_names,
            "node_range": f"n[1-{self.nodes}]" if self.nodes > 1 else "n1",
            "port_range": f"[{self.first_node_port}-{last}]" if self.nodes > 1 else str(last),
            "cpus_per_node": self.cpus_per_node,
            "memory_mb": self.memory_mb,
            "gpus_per_node": self.gpus_per_node,
            "partition": self.partition,
        }


def render(config: ClusterConfig) -> dict[str, str]:
    """File name -> contents, for every file under ``etc/``."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("slurm_llm.cluster", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    variables = config.variables()
    return {name: environment.get_template(f"{name}.j2").render(variables) for name in TEMPLATES}
