"""The package's layering holds: what runs on a compute node (``node``, ``engines``, ``spec``)
never imports the submit side, jobs never import the control plane, front ends sit on top.
The layers are stated once, in ``pyproject.toml`` (``[tool.importlinter]``), and checked here
by import-linter over the real import graph."""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter import cli

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def test_no_module_imports_from_a_layer_above_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    assert status == 0, capsys.readouterr().out
