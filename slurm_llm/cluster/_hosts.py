"""Node names in /etc/hosts while the cluster runs.

submitit's host lists and torch's MASTER_ADDR carry node names (``n1``), so they must resolve.
Each line is marked with the cluster's directory, so stopping one cluster removes only its own
lines and never an administrator's. /etc/hosts is rewritten in place, not replaced by a rename:
in containers it is often a bind mount, which a rename cannot replace.
"""

from __future__ import annotations

from pathlib import Path

HOSTS = Path("/etc/hosts")


def marker(root: Path) -> str:
    return f"# slurm-llm local cluster {root}"


def add(root: Path, nodes: list[str], hosts: Path = HOSTS) -> None:
    """Node ``nI`` gets 127.0.1.I: a loopback address of its own, so servers on different
    nodes can use the same port, as on a real cluster."""
    mark = marker(root)
    lines = [f"127.0.1.{i} {node} {mark}" for i, node in enumerate(nodes, 1)]
    _write(hosts, [*_without(hosts, mark), *lines])


def remove(root: Path, hosts: Path = HOSTS) -> None:
    _write(hosts, _without(hosts, marker(root)))


def _without(hosts: Path, mark: str) -> list[str]:
    return [line for line in hosts.read_text().splitlines() if not line.endswith(mark)]


def _write(hosts: Path, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    if hosts.read_text() != text:
        hosts.write_text(text)
