"""Named API keys: the file keeps only hashes, the flat form still works, limits are checked."""

from __future__ import annotations

import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from slurm_llm import SlurmLLMError
from slurm_llm._api_keys import (
    Identities,
    Identity,
    KeysFile,
    hash_key,
    load_api_keys,
    load_identities,
)
from slurm_llm.cli import main


def test_a_key_added_is_shown_once_and_stored_only_as_its_hash(tmp_path: Path) -> None:
    keys = KeysFile(tmp_path / "keys.toml")
    key = keys.add("alice", account="physics", models=("smollm2",), priority="batch",
                   requests_per_minute=60, tokens_per_day=1000)  # fmt: skip
    text = keys.path.read_text()
    assert key.startswith("sk-slurm-llm-") and key not in text
    entry = tomllib.loads(text)["keys"]["alice"]
    assert entry["hash"] == hash_key(key) and entry["requests_per_minute"] == 60
    identity = load_identities(keys.path, {}).find(key)
    assert identity is not None and identity.account == "physics" and identity.priority == "batch"
    assert identity.may_use("smollm2") and not identity.may_use("llama")


def test_an_operators_key_is_made_by_the_cli_and_the_flag_written_only_where_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.toml"
    assert main(["keys", "add", "admin", "--operator", "--file", str(path)]) == 0
    assert main(["keys", "add", "user", "--file", str(path)]) == 0
    text = path.read_text()
    assert text.count("operator") == 1 and "operator = true" in text  # TOML's true
    identities = KeysFile(path).identities()
    assert identities["admin"].operator and not identities["user"].operator


def test_a_revoked_key_is_listed_but_no_longer_accepted(tmp_path: Path) -> None:
    keys = KeysFile(tmp_path / "keys.toml")
    key = keys.add("alice")
    keys.revoke("alice")
    assert keys.identities()["alice"].revoked is not None
    assert load_identities(keys.path, {}).find(key) is None


def test_names_are_unique_and_unknown_names_are_named(tmp_path: Path) -> None:
    keys = KeysFile(tmp_path / "keys.toml")
    keys.add("alice")
    with pytest.raises(SlurmLLMError, match="already has a key named 'alice'"):
        keys.add("alice")
    with pytest.raises(SlurmLLMError, match=r"no key named 'bob' \(it has: alice\)"):
        keys.revoke("bob")
    with pytest.raises(SlurmLLMError, match="cannot add 'carol'"):
        keys.add("carol", requests_per_minute=0)


def test_a_flat_file_and_the_environment_still_work(tmp_path: Path) -> None:
    flat = tmp_path / "keys"
    flat.write_text("# team A\nalpha\n\nbeta  # rotated\n")
    identities = load_identities(flat, {"SLURM_LLM_API_KEYS": "gamma,"})
    assert len(identities) == 3 and identities.find("beta") is not None
    assert identities.find("gamma") is not None and identities.find("delta") is None


def test_nginx_is_told_it_cannot_check_hashed_keys(tmp_path: Path) -> None:
    keys = KeysFile(tmp_path / "keys.toml")
    keys.add("alice")
    with pytest.raises(SlurmLLMError, match="nginx cannot check"):
        load_api_keys(keys.path, {})


def test_a_keys_file_with_a_wrong_field_says_so(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(f'[keys.alice]\nhash = "{hash_key("k")}"\nrequests_per_hour = 5\n')
    with pytest.raises(SlurmLLMError, match="requests_per_hour"):
        load_identities(path, {})


def test_names_are_plain_and_any_account_text_reads_back(tmp_path: Path) -> None:
    keys = KeysFile(tmp_path / "keys.toml")
    with pytest.raises(SlurmLLMError, match="cannot name a key"):
        keys.add("a\nb")
    key = keys.add("alice.smith@physics", account='line\nbreak "quoted" \x7f')
    identity = load_identities(keys.path, {}).find(key)
    assert identity is not None and identity.account == 'line\nbreak "quoted" \x7f'


def test_keys_added_at_once_by_several_writers_are_all_kept(tmp_path: Path) -> None:
    """Each change is a read-modify-write under the file's lock: none replaces another's."""
    keys = KeysFile(tmp_path / "keys.toml")
    with ThreadPoolExecutor(8) as pool:
        added = list(pool.map(lambda n: (f"user{n}", KeysFile(keys.path).add(f"user{n}")),
                              range(16)))  # fmt: skip
    identities = load_identities(keys.path, {})
    assert sorted(keys.identities()) == sorted(name for name, _ in added)
    assert all(identities.find(key) is not None for _, key in added)


def test_a_key_found_is_hashed_once_and_a_wrong_guess_is_not_kept() -> None:
    alice = Identity(name="alice", hash=hash_key("sk-alice"))
    identities = Identities({"alice": alice})
    assert identities.find("sk-alice") == alice
    assert identities.find("sk-alice") == alice  # from what was found, not hashed again
    assert identities.find("sk-guess") is None
    assert list(identities._found) == ["sk-alice"]
