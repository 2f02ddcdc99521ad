"""Who is calling: ``Authorization: Bearer <key>`` (what the openai client sends) or
``X-API-Key``, looked up by the key's hash among the router's identities (``_api_keys``). The
keys file is re-read when it changes, at most once a second, so keys are added and revoked
without a restart."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from aiohttp import web

from slurm_llm._api_keys import Identities, Identity, flat_identities, read_keys_file
from slurm_llm._errors import SlurmLLMError
from slurm_llm.router._errors import RouterError

log = logging.getLogger("slurm_llm.router")
# For load balancers and liveness checks, and the API's description (no secret in it).
OPEN_PATHS = frozenset({"/health", "/ready", "/openapi.json", "/docs"})
RELOAD_EVERY_S = 1.0


def presented_key(authorization: str | None, api_key_header: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return api_key_header


class Callers:
    """The identities this router accepts: its flat keys and those of its keys file."""

    def __init__(self, flat_keys: frozenset[str], keys_file: Path | None) -> None:
        self.flat = flat_identities(sorted(flat_keys), "key")
        self.keys_file = keys_file
        # Keys were configured: a key is required even when none is active (all revoked), so
        # revoking the last one closes the router rather than opening it.
        self.required = bool(flat_keys) or keys_file is not None
        self.identities = Identities(self.flat)
        self.file_stamp: tuple[int, int, int, int] | None = None
        self.checked = 0.0
        self.reload()

    def reload(self) -> None:
        """Re-reads the keys file if it changed; a file that does not read keeps the last
        good identities (and says why), so a typo never locks every user out."""
        if self.keys_file is None:
            return
        try:
            stat = self.keys_file.stat()
        except OSError as exc:
            log.error("cannot read the keys file %s (%s); keeping its last keys", self.keys_file,
                      exc.strerror)  # fmt: skip
            return
        stamp = (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino)
        if stamp == self.file_stamp:
            return
        try:
            self.identities = Identities({**self.flat, **read_keys_file(self.keys_file)})
        except SlurmLLMError as exc:
            log.error("%s; keeping its last keys", exc)
            return
        if self.file_stamp is not None:
            log.warning("keys reloaded from %s: %d key(s)", self.keys_file, len(self.identities))
        self.file_stamp = stamp

    def has_quotas(self) -> bool:
        """Whether a key has a daily or monthly token quota (as the keys read now)."""
        return any(
            identity.tokens_per_day or identity.tokens_per_month
            for identity in self.identities.by_hash.values()
        )

    def holder(self, key_hash: str) -> Identity | None:
        """The active identity of the key with this hash (a durable batch's owner, whose lines
        are sent long after the request that made it); None when revoked or unknown here."""
        return self.identities.by_hash.get(key_hash)

    def identify(self, request: web.Request) -> Identity | None:
        """The caller's identity; None when this router needs no key. Raises 401."""
        now = time.monotonic()
        if now - self.checked >= RELOAD_EVERY_S:
            self.checked = now
            self.reload()
        if not self.required:
            return None
        given = presented_key(
            request.headers.get("Authorization"), request.headers.get("X-API-Key")
        )
        if given is None:
            raise RouterError(
                401,
                "this router needs an API key: send 'Authorization: Bearer <key>' "
                "(the openai client's api_key) or 'X-API-Key: <key>'",
                "authentication_error",
            )
        identity = self.identities.find(given)
        if identity is None:
            raise RouterError(401, "the API key is not valid", "authentication_error")
        return identity


def sees_everything(callers: Callers, caller: Identity | None) -> bool:
    """Whether the caller may read every caller's data (all keys' usage, the verdict log with
    their prompts, replicas' logs): an operator's key, or anyone on a router without keys,
    which tells no caller from another."""
    return not callers.required or (caller is not None and caller.operator)


def require_sight(callers: Callers, caller: Identity | None, what: str) -> None:
    """403 unless ``sees_everything``."""
    if not sees_everything(callers, caller):
        name = caller.name if caller is not None else "?"
        raise RouterError(
            403, f"{what} needs an operator's key; key {name!r} is not one "
            "(slurm-llm keys add NAME --operator makes one)", "permission_denied",
        )  # fmt: skip


def require_operator(callers: Callers, caller: Identity | None, what: str) -> None:
    """403 unless the caller may change the service (scale, stop): an operator's key, always.
    A router without keys has no operators: any page a user's browser opens could otherwise
    send it a request that stops a deployment, and a tunnel or proxy makes every client look
    local."""
    if caller is not None and caller.operator:
        return
    why = (
        f"key {caller.name!r} is not an operator's (slurm-llm keys add NAME --operator)"
        if caller is not None
        else "this router has no keys; start it with --api-keys-file and an operator's key "
        "(slurm-llm keys add NAME --operator)"
    )
    raise RouterError(403, f"{what} needs an operator: {why}", "permission_denied")
