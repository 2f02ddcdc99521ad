"""Public names present themselves under the module users import them from."""

from __future__ import annotations

from typing import Any


def present_as_public(module: str, namespace: dict[str, Any], names: list[str]) -> None:
    """Sets ``__module__`` of the classes and functions in ``names`` to ``module``, so reprs,
    tracebacks, pickles and the docs say ``slurm_llm.Deployment``, not the private module it is
    defined in (as httpx does). A name's private module may move; the public one stays."""
    for name in names:
        value = namespace[name]
        if isinstance(value, type) or (callable(value) and hasattr(value, "__module__")):
            value.__module__ = module
