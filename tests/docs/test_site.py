"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a page missing
from the nav or a failing generator fails it), and its generated reference names everything
users can set or read: every spec field, every CLI command, every route, every metric, and
every environment variable the code reads (found in the source, not in a list of ours)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_llm import ModelSpec, SlurmOptions
from slurm_llm.cli import build_parser
from slurm_llm.router._openapi import openapi_document

ROOT = Path(__file__).parents[2]
# mkdocs-material and a plugin print notices about MkDocs' future on every build; not ours.
QUIET = {"NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env={**os.environ, **QUIET}, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-4000:]
    return out


def page(site: Path, name: str) -> str:
    return (site / "reference" / name / "index.html").read_text()


def commands(parser: argparse.ArgumentParser, path: str = "slurm-llm") -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{path} {name}"
                yield from commands(sub, f"{path} {name}")


def test_every_spec_field_is_in_the_reference(site: Path) -> None:
    html = page(site, "spec")
    for model in (ModelSpec, SlurmOptions):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert f"<code>{name}</code>" in html, name


def test_every_cli_command_is_in_the_reference(site: Path) -> None:
    html = page(site, "cli")
    found = list(commands(build_parser()))
    assert "slurm-llm router" in found and "slurm-llm cluster up" in found
    for command in found:
        assert f"<code>{command}</code>" in html, command


def test_every_route_is_in_the_reference(site: Path) -> None:
    html = page(site, "http-api")
    for path, methods in openapi_document()["paths"].items():
        for method in methods:
            assert f"<code>{method.upper()} {path}</code>" in html, path


def test_every_metric_is_in_the_reference(site: Path) -> None:
    html = page(site, "metrics")
    source = (ROOT / "slurm_llm" / "router" / "_metrics.py").read_text()
    names = re.findall(r'f"\{prefix\}_(\w+)"', source) + re.findall(r'"(replica_\w+)"', source)
    names += re.findall(r'"slurm_llm_router_(\w+)"', source)
    assert len(names) > 10
    for name in names:
        assert f"slurm_llm_router_{name}" in html, name


def test_every_environment_variable_the_code_reads_is_in_the_reference(site: Path) -> None:
    html = page(site, "environment")
    read = re.compile(
        r'(?:environ\.get\(|environ\[|getenv\()"([A-Z][A-Z0-9_]+)"|"(SLURM_LLM_[A-Z_]+)"'
    )
    found = {
        name
        for path in (ROOT / "slurm_llm").rglob("*.py")
        for match in read.finditer(path.read_text())
        for name in match.groups()
        if name
    }
    assert {"SLURM_LLM_HOME", "SLURM_LLM_HOST", "SLURM_LLM_API_KEYS"} <= found
    for name in found:
        assert f"<code>{name}</code>" in html, name
