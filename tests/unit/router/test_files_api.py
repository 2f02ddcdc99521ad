"""The Files API's checks, on a router with two keys and no replica: uploads that are not
multipart, have the wrong purpose or are too large are refused and leave no file behind, and
one key never sees another's files."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from slurm_llm._api_keys import KeysFile
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread

LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}\n'


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("files")
    keys = KeysFile(folder / "keys.toml")
    return folder, {name: keys.add(name) for name in ("alice", "bob")}


@pytest.fixture(scope="module")
def router(keys: tuple[Path, dict[str, str]]) -> Iterator[RouterThread]:
    home, _ = keys
    config = RouterConfig(probes=ProbeConfig(interval_s=0), keys_file=home / "keys.toml",
                          max_file_bytes=1000)  # fmt: skip
    with RouterThread(static=[("m", "http://127.0.0.1:9")], config=config, home=home) as running:
        yield running


class Caller:
    """One key's plain HTTP calls to the router (aiohttp, for multipart bodies)."""

    def __init__(self, router: RouterThread, secret: str) -> None:
        self.base = f"{router.url}/v1"
        self.headers = {"Authorization": f"Bearer {secret}"}

    def __call__(self, method: str, path: str, form: dict[str, Any] | None = None,
                 **options: Any) -> tuple[int, Any]:  # fmt: skip
        """(status, JSON body or bytes); ``form``: name -> value, or (filename, bytes)."""

        async def call() -> tuple[int, Any]:
            if form is not None:
                data = aiohttp.FormData()
                for name, value in form.items():
                    if isinstance(value, tuple):
                        data.add_field(name, value[1], filename=value[0])
                    else:
                        data.add_field(name, value)
                options["data"] = data
            async with (
                aiohttp.ClientSession(headers=self.headers) as session,
                session.request(method, self.base + path, **options) as answer,
            ):
                raw = await answer.read()
                is_json = answer.content_type == "application/json"
                return answer.status, await answer.json() if is_json else raw

        return asyncio.run(call())


def caller(keys: tuple[Path, dict[str, str]], router: RouterThread, who: str) -> Caller:
    return Caller(router, keys[1][who])


def stored(keys: tuple[Path, dict[str, str]]) -> list[str]:
    return sorted(p.name for p in (keys[0] / "files").glob("*") if not p.name.startswith("."))


def test_a_file_is_its_owners_alone(
    router: RouterThread, keys: tuple[Path, dict[str, str]]
) -> None:
    alice, bob = caller(keys, router, "alice"), caller(keys, router, "bob")
    status, made = alice("POST", "/files", {"file": ("in.jsonl", LINE), "purpose": "batch"})
    assert status == 200, made
    file_id = made["id"]
    assert alice("GET", f"/files/{file_id}/content") == (200, LINE)
    assert [f["id"] for f in alice("GET", "/files")[1]["data"]] == [file_id]
    assert bob("GET", "/files")[1]["data"] == []
    for method, path in (("GET", ""), ("GET", "/content"), ("DELETE", "")):
        assert bob(method, f"/files/{file_id}{path}")[0] == 404
    assert alice("DELETE", f"/files/{file_id}")[1]["deleted"] is True
    assert stored(keys) == []


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        (None, 400, "multipart"),
        ({"file": ("in.jsonl", LINE), "purpose": "fine-tune"}, 400, "'purpose' must be"),
        ({"file": ("in.jsonl", LINE * 20), "purpose": "batch"}, 413, "larger than 1000 bytes"),
        ({"purpose": "batch", "other": ("x", b"y")}, 400, "no 'file'"),
    ],
    ids=["not-multipart", "wrong-purpose", "too-large", "no-file"],
)  # fmt: skip
def test_a_refused_upload_says_why_and_leaves_no_file(
    router: RouterThread, keys: tuple[Path, dict[str, str]], form: dict[str, Any] | None,
    status: int, message: str,
) -> None:  # fmt: skip
    alice = caller(keys, router, "alice")
    answer = alice("POST", "/files", form, json=None if form else {"purpose": "batch"})
    assert answer[0] == status and message in answer[1]["error"]["message"]
    assert stored(keys) == []


def test_ids_that_are_not_the_stores_never_reach_a_path(
    router: RouterThread, keys: tuple[Path, dict[str, str]]
) -> None:
    alice = caller(keys, router, "alice")
    for file_id in ("..%2Fkeys.toml", "file-..%2F..%2Fkeys", "keys.toml"):
        assert alice("GET", f"/files/{file_id}/content")[0] == 404
    assert alice("GET", "/batches/batch_nothing")[0] == 404


def test_a_multipart_body_aiohttp_cannot_decode_is_a_400(
    router: RouterThread, keys: tuple[Path, dict[str, str]]
) -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n'
        b"Content-Type: text/plain; charset=no-such-charset\r\n\r\nbatch\r\n--b--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    status, answer = caller(keys, router, "alice")("POST", "/files", data=body, headers=headers)
    assert status == 400 and "malformed" in answer["error"]["message"]
    assert stored(keys) == []
