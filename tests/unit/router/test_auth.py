"""API keys: where they come from and how they are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_llm import SlurmLLMError
from slurm_llm._api_keys import load_api_keys
from slurm_llm.router._auth import check_key, presented_key
from slurm_llm.router._errors import RouterError


def test_keys_come_from_a_file_and_the_environment(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team A\nalpha\n\nbeta  # rotated 2026-11\n")
    keys = load_api_keys(keys_file, {"SLURM_LLM_API_KEYS": "gamma, delta,"})
    assert keys == {"alpha", "beta", "gamma", "delta"}


def test_an_unreadable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SlurmLLMError, match=r"cannot read the API key file .*missing"):
        load_api_keys(tmp_path / "missing", {})


def test_the_bearer_header_wins_over_x_api_key() -> None:
    assert presented_key("Bearer  abc ", "xyz") == "abc"
    assert presented_key("bearer abc", None) == "abc"
    assert presented_key(None, "xyz") == "xyz"
    assert presented_key("Basic abc", None) is None


def test_a_missing_key_says_how_to_send_one() -> None:
    with pytest.raises(RouterError, match="Authorization: Bearer") as caught:
        check_key(None, frozenset({"k"}))
    assert caught.value.status == 401


def test_a_wrong_key_is_refused_and_a_right_one_passes() -> None:
    with pytest.raises(RouterError, match="not valid"):
        check_key("k2", frozenset({"k1", "k3"}))
    check_key("k3", frozenset({"k1", "k3"}))
