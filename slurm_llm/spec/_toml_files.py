"""TOML files users edit (model specs, law books), read with errors that name the file and the
field at fault, so a typo costs one glance, not a traceback."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from slurm_llm._errors import SpecError


def read_toml(path: Path, what: str, missing: str | None = None) -> dict[str, Any]:
    """The file's table; ``SpecError`` if it is absent (``missing`` says what to do) or not TOML."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(missing or f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, a file it may not read, not text
        raise SpecError(f"cannot read {what} {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{what} {path} is not valid TOML: {exc}") from None


def explain(error: ValidationError, what: str, class_name: str) -> str:
    """One line per invalid field, e.g. ``invalid model spec: replicas: ...``."""
    root = what.rsplit(maxsplit=1)[-1]
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or root
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = f"is not a {class_name} field; check its spelling"
        lines.append(f"{field}: {message}")
    return f"invalid {what}: " + "; ".join(lines)
