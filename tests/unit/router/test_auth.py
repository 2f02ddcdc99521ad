"""API keys: where they come from and how they are checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from slurm_llm import SlurmLLMError
from slurm_llm._api_keys import KeysFile, load_api_keys
from slurm_llm.router._auth import (
    Callers,
    presented_key,
    require_operator,
    require_sight,
    sees_everything,
)
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


def request(headers: dict[str, str]) -> web.Request:
    return make_mocked_request("POST", "/v1/completions", headers=headers)


def test_a_missing_key_says_how_to_send_one() -> None:
    with pytest.raises(RouterError, match="Authorization: Bearer") as caught:
        Callers(frozenset({"k"}), None).identify(request({}))
    assert caught.value.status == 401


def test_a_wrong_key_is_refused_and_a_right_one_passes() -> None:
    callers = Callers(frozenset({"k1", "k3"}), None)
    with pytest.raises(RouterError, match="not valid"):
        callers.identify(request({"Authorization": "Bearer k2"}))
    identity = callers.identify(request({"X-API-Key": "k3"}))
    assert identity is not None and identity.name == "key-2"


def test_a_router_without_keys_lets_everyone_in_anonymously() -> None:
    assert Callers(frozenset(), None).identify(request({})) is None


def test_keys_added_and_revoked_in_the_file_apply_without_a_restart(tmp_path: Path) -> None:
    keys = KeysFile(tmp_path / "keys.toml")
    alice = keys.add("alice", account="physics")
    callers = Callers(frozenset(), keys.path)
    assert callers.identify(request({"X-API-Key": alice})).account == "physics"  # type: ignore[union-attr]
    bob = keys.add("bob")
    keys.revoke("alice")
    callers.checked = 0.0  # as if a second had passed
    assert callers.identify(request({"X-API-Key": bob})) is not None
    with pytest.raises(RouterError, match="not valid"):
        callers.identify(request({"X-API-Key": alice}))


@pytest.mark.parametrize(
    "mistake",
    ["\n[keys.bob]\nhash = 'not a hash'\n", "\n[keys.carol\npriority = batch\n"],
    ids=["a wrong value", "a TOML syntax error"],
)
def test_a_keys_file_broken_by_hand_keeps_the_last_good_keys(tmp_path: Path, mistake: str) -> None:
    keys = KeysFile(tmp_path / "keys.toml")
    alice = keys.add("alice")
    callers = Callers(frozenset(), keys.path)
    keys.path.write_text(keys.path.read_text() + mistake)
    stamp = callers.file_stamp
    callers.checked = 0.0
    assert callers.identify(request({"X-API-Key": alice})) is not None
    assert callers.file_stamp == stamp, "the broken file was not taken"
    with pytest.raises(RouterError, match="not valid"):  # its lines did not become keys
        callers.identify(request({"X-API-Key": "[keys.carol"}))


def test_revoking_the_last_key_closes_the_router_it_does_not_open_it(tmp_path: Path) -> None:
    keys = KeysFile(tmp_path / "keys.toml")
    keys.add("alice")
    callers = Callers(frozenset(), keys.path)
    keys.revoke("alice")
    callers.checked = 0.0
    with pytest.raises(RouterError, match="needs an API key"):
        callers.identify(request({}))


def test_only_an_operators_key_may_change_or_see_everything(tmp_path: Path) -> None:
    keys = KeysFile(tmp_path / "keys.toml")
    admin_key, user_key = keys.add("admin", operator=True), keys.add("user")
    callers = Callers(frozenset(), keys.path)
    admin = callers.identities.find(admin_key)
    user = callers.identities.find(user_key)
    require_operator(callers, admin, "stopping")
    require_sight(callers, admin, "the verdict log")
    with pytest.raises(RouterError, match="stopping needs an operator: key 'user' is not") as no:
        require_operator(callers, user, "stopping")
    assert no.value.status == 403
    with pytest.raises(RouterError, match="the verdict log needs an operator's key"):
        require_sight(callers, user, "the verdict log")


def test_a_router_without_keys_hides_nothing_but_lets_nobody_change_it() -> None:
    """Without keys, any page open in a user's browser could send it a request; behind an SSH
    tunnel or a proxy every client looks local: so no client of an open router operates."""
    callers = Callers(frozenset(), None)
    assert sees_everything(callers, None)
    with pytest.raises(RouterError, match="this router has no keys; start it with"):
        require_operator(callers, None, "stopping")
