"""Who is calling: API keys and the identities behind them, read the same way by the router and
by nginx. Not to be confused with ``SLURM_LLM_API_KEY``, the one key a client (``slurm-llm
bench``) sends.

Two forms are accepted. A **keys file** in TOML names each key's holder, account, models,
priority class and limits, and stores only the key's SHA-256 (``slurm-llm keys add`` writes it):
a copy of the file does not give anyone a key. Keys are long random strings, so a plain hash is
as hard to reverse as the key is to guess; no slow password hash is needed. The **flat form**
(one key per line, ``#`` starts a comment; and ``SLURM_LLM_API_KEYS``, comma-separated) still
works: each such key is an identity with no limits. nginx can only check flat keys (it compares
them in its configuration); names, limits, priorities and usage need the router.

```toml
[keys.alice]
hash = "sha256:9f86d0…"
account = "physics"            # the SLURM account usage is charged to
models = ["llama-3.1-8b"]      # default: every model
priority = "interactive"       # or "batch": served after interactive requests, with aging
requests_per_minute = 60
tokens_per_minute = 20000      # prompt and completion tokens
concurrent_requests = 4
tokens_per_day = 1000000
tokens_per_month = 10000000
```
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slurm_llm._errors import SlurmLLMError
from slurm_llm._files import locked, write_atomic

KEYS_ENV = "SLURM_LLM_API_KEYS"
KEY_PREFIX = "sk-slurm-llm-"
Priority = Literal["interactive", "batch"]


class Identity(BaseModel):
    """One key's holder and what it may do; ``None`` limits are unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    account: str | None = None
    models: tuple[str, ...] = ("*",)
    priority: Priority = "interactive"
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    concurrent_requests: int | None = Field(default=None, ge=1)
    tokens_per_day: int | None = Field(default=None, ge=1)
    tokens_per_month: int | None = Field(default=None, ge=1)
    created: str | None = None
    revoked: str | None = None  # when; a revoked key is refused, its usage stays attributed
    # May change the service, not only use it: scale and stop deployments, read every key's
    # usage and the tribunal's verdict log (which holds every caller's prompts) in the console.
    operator: bool = False

    def may_use(self, model: str) -> bool:
        return "*" in self.models or model in self.models


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A key as ``slurm-llm keys add`` hands it out: 256 random bits, recognisable by prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class Identities:
    """The identities a front end accepts, looked up by the hash of the presented key."""

    def __init__(self, identities: Mapping[str, Identity] = {}) -> None:
        self.by_hash = {i.hash: i for i in identities.values() if i.revoked is None}
        # Keys already found, so that a front end hashes each once, not on every request. Only
        # keys that are active here: a wrong guess is not kept, and a reload (a revocation)
        # makes new Identities.
        self._found: dict[str, Identity] = {}

    def __len__(self) -> int:
        return len(self.by_hash)

    def find(self, key: str) -> Identity | None:
        found = self._found.get(key)
        if found is None:
            found = self.by_hash.get(hash_key(key))
            if found is not None:
                self._found[key] = found
        return found


def read_keys_file(path: Path) -> dict[str, Identity]:
    """Every identity in a keys file (revoked ones included), by name; a file without a table
    is read in the flat form, one key per line."""
    text = key_file_text(path)
    if (plain := plain_keys(text)) is not None:
        return flat_identities(plain, "line")
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SlurmLLMError(f"the API key file {path} is not valid TOML: {exc}") from None
    if not isinstance(table.get("keys", {}), dict):
        raise SlurmLLMError(f"the API key file {path} needs a [keys.<name>] table per key")
    try:
        return {name: Identity(name=name, **entry) for name, entry in table.get("keys", {}).items()}
    except (ValidationError, TypeError) as exc:
        raise SlurmLLMError(f"the API key file {path} is not valid: {exc}") from None


def key_file_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise SlurmLLMError(f"cannot read the API key file {path}: {exc.strerror}") from exc


def plain_keys(text: str) -> list[str] | None:
    """The keys of a flat key file (one per line, ``#`` starts a comment); None for a TOML
    keys file, which has a table line."""
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    if any(line.startswith("[") for line in lines):
        return None
    return [line for line in lines if line]


def env_keys(environ: Mapping[str, str] | None) -> list[str]:
    """The keys of ``SLURM_LLM_API_KEYS`` (comma-separated)."""
    env = os.environ if environ is None else environ
    return [key.strip() for key in env.get(KEYS_ENV, "").split(",") if key.strip()]


def flat_identities(keys: list[str], origin: str) -> dict[str, Identity]:
    """Plain keys as identities without limits, named by where they came from."""
    return {f"{origin}-{n}": Identity(name=f"{origin}-{n}", hash=hash_key(key))
            for n, key in enumerate(keys, 1)}  # fmt: skip


def load_identities(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> Identities:
    """The identities of a keys file (either form) and of ``SLURM_LLM_API_KEYS``."""
    found = read_keys_file(path) if path is not None else {}
    found.update(flat_identities(env_keys(environ), KEYS_ENV))
    return Identities(found)


def load_api_keys(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> frozenset[str]:
    """The plain keys of a flat key file and of ``SLURM_LLM_API_KEYS``, for nginx, which
    compares keys itself; a hashed keys file has none to give it."""
    keys = set(env_keys(environ))
    if path is not None:
        plain = plain_keys(key_file_text(path))
        if plain is None:
            raise SlurmLLMError(
                f"{path} holds hashed keys, which nginx cannot check; use the router for named "
                "keys with limits, or give nginx a file of plain keys"
            )
        keys.update(plain)
    return frozenset(keys)


class KeysFile:
    """``slurm-llm keys``: adds, lists and revokes the identities of one TOML keys file. Every
    change is made under the file's lock and written atomically, so a router reading it (it
    reloads on change) never sees half a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def identities(self) -> dict[str, Identity]:
        return read_keys_file(self.path) if self.path.exists() else {}

    def add(self, name: str, **settings: object) -> str:
        """Adds ``name`` and returns its key: the only time the key is shown."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]*", name):
            raise SlurmLLMError(f"{name!r} cannot name a key: use letters, digits and . _ @ -")
        key = new_key()
        created = datetime.now(UTC).isoformat(timespec="seconds")
        with locked(self._lock_path()):
            identities = self.identities()
            if name in identities:
                raise SlurmLLMError(f"{self.path} already has a key named {name!r}")
            try:
                identities[name] = Identity(
                    name=name,
                    hash=hash_key(key),
                    created=created,
                    **settings,
                )
            except ValidationError as exc:
                raise SlurmLLMError(f"cannot add {name!r}: {exc}") from None
            self._write(identities)
        return key

    def revoke(self, name: str) -> Identity:
        with locked(self._lock_path()):
            identities = self.identities()
            if name not in identities:
                known = ", ".join(sorted(identities)) or "none"
                raise SlurmLLMError(f"{self.path} has no key named {name!r} (it has: {known})")
            revoked = datetime.now(UTC).isoformat(timespec="seconds")
            identities[name] = identities[name].model_copy(update={"revoked": revoked})
            self._write(identities)
            return identities[name]

    def _lock_path(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.path.with_name(self.path.name + ".lock")

    def _write(self, identities: Mapping[str, Identity]) -> None:
        lines = ["# slurm-llm API keys: only their hashes. Managed by `slurm-llm keys`.", ""]
        for name, identity in identities.items():
            lines.append(f"[keys.{toml_key(name)}]")
            for field, value in identity.model_dump(exclude={"name"}).items():
                default = (field == "models" and value == ("*",)) or (
                    field == "operator" and value is False
                )  # left out, so files written before the field existed stay as they were
                if value is not None and not default:
                    lines.append(f"{field} = {toml_value(value)}")
            lines.append("")
        write_atomic(self.path, "\n".join(lines))


def toml_key(name: str) -> str:
    bare = name.replace("-", "").replace("_", "").isalnum() and name.isascii()
    return name if bare else toml_value(name)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # a JSON string is a TOML basic string, every character escaped
        return json.dumps(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)
