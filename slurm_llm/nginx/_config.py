"""The nginx configuration for a set of models and their replicas, rendered from a template.

The template (``nginx/slurm-llm.conf.j2`` in the repository, shipped inside the wheel) is plain
nginx with a few loops, so an operator can read exactly what runs. Everything that goes into it
is checked here first: nginx has no escaping for location prefixes or quoted strings that is
safe to rely on, so names and keys that would need it are refused with a message instead.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import jinja2

from slurm_llm._paths import shipped_dir
from slurm_llm.nginx._errors import NginxConfigError

Balancing = Literal["least_conn", "session"]
TEMPLATE = "slurm-llm.conf.j2"

# Path segments of URL-safe characters that nginx reads literally in a location prefix and a
# quoted string. Each segment starts with a letter or digit, so "." and ".." segments (which
# nginx normalizes away before matching) and empty segments ("//", which nginx merges) cannot
# occur: a name that passes is a prefix that requests really match.
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._~:-]*"
_MODEL_NAME = re.compile(rf"^{_SEGMENT}(?:/{_SEGMENT})*$")
_RESERVED = {"health"}
# RFC 6750 token68 characters: what a Bearer token may contain, none of them nginx syntax.
_API_KEY = re.compile(r"^[A-Za-z0-9._~+/-]+=*$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]*\$?( [a-z_][a-z0-9_-]*)?$")


def template_dir() -> Path:
    """The shipped template: inside the wheel, or the repository's ``nginx/`` in a checkout."""
    return shipped_dir("nginx/templates", "nginx")


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.match(name):
        raise NginxConfigError(
            f"model name {name!r} cannot be an nginx path prefix: use letters, digits and "
            "'._~:-', with '/' only between such parts (e.g. 'meta-llama/Llama-3.1-8B'); "
            "serve it under another name (ModelSpec.name)"
        )
    if name in _RESERVED:
        raise NginxConfigError(f"model name {name!r} is taken by nginx's /{name} endpoint")
    return name


def upstream_server(url: str) -> str:
    """``http://host:port`` as nginx's ``server`` address (``host:port``, IPv6 in brackets)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise NginxConfigError(f"upstream {url!r} is not a URL: {error}") from None
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise NginxConfigError(
            f"upstream {url!r} must be 'http://host:port' (replicas speak plain HTTP)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise NginxConfigError(
            f"upstream {url!r} must be only 'http://host:port': the path comes from the request"
        )
    host = parts.hostname
    if not re.match(r"^[A-Za-z0-9._:-]+$", host):
        raise NginxConfigError(f"upstream {url!r}: host {host!r} is not a host name or address")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class NginxConfig:
    """What nginx should serve: each model's replicas, where to listen, and how to balance.

    ``upstreams`` maps a model name to its replicas' base URLs (``http://host:port``); a model
    with no replica answers 503 rather than disappearing, so clients see "not ready" instead of
    "unknown model". Clients reach a model at ``http://host:port/<model>/v1/...``, which nginx
    passes to a replica as ``/v1/...`` (an OpenAI client's ``base_url`` is
    ``http://host:port/<model>/v1``). ``balancing`` is ``least_conn`` (fewest requests in
    flight: generations differ wildly in length, so round-robin piles up on slow ones) or
    ``session`` (consistent hash of the ``X-Session-Id`` header: a conversation stays on the
    replica whose prefix cache holds it). ``api_keys``, when given, are required as
    ``Authorization: Bearer <key>`` on every model path.
    """

    upstreams: Mapping[str, Sequence[str]]
    prefix: Path
    host: str = "127.0.0.1"
    port: int = 8080
    balancing: Balancing = "least_conn"
    api_keys: Sequence[str] = ()
    worker_processes: int | None = None  # None: one per core ("auto")
    worker_connections: int = 16384
    max_fails: int = 3
    fail_timeout_s: int = 10
    keepalive: int = 64
    read_timeout_s: int = 3600
    next_upstream_tries: int = 3
    client_max_body_mb: int = 16
    user: str | None = None  # only meaningful when nginx is started by root
    _servers: dict[str, list[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        servers = {}
        for name, urls in self.upstreams.items():
            if isinstance(urls, str):
                raise NginxConfigError(f"model {name!r}: give a list of URLs, not one string")
            servers[check_model_name(name)] = [upstream_server(url) for url in urls]
        object.__setattr__(self, "_servers", servers)
        if not self.prefix.is_absolute():
            raise NginxConfigError(f"prefix {self.prefix} must be an absolute path")
        if not re.match(r"^[A-Za-z0-9._/+@-]+$", str(self.prefix)):
            raise NginxConfigError(
                f"prefix {self.prefix} must not contain spaces, quotes or nginx syntax"
            )
        if not re.match(r"^[A-Za-z0-9.:_-]+$", self.host):
            raise NginxConfigError(f"listen host {self.host!r} is not an address or host name")
        if not 0 < self.port < 65536:
            raise NginxConfigError(f"listen port {self.port} is not a TCP port")
        if self.balancing not in ("least_conn", "session"):
            raise NginxConfigError(f"balancing {self.balancing!r} is not 'least_conn' or 'session'")
        for key in self.api_keys:
            if not _API_KEY.match(key):
                raise NginxConfigError(
                    "an API key may contain only letters, digits and '-._~+/' (then '='s): "
                    "other characters would need escaping in nginx's configuration"
                )
        if self.user is not None and not _USER.match(self.user):
            raise NginxConfigError(f"user {self.user!r} is not a user name (and group)")
        for name in ("worker_connections", "max_fails", "keepalive", "read_timeout_s",
                     "next_upstream_tries", "client_max_body_mb", "fail_timeout_s"):  # fmt: skip
            if getattr(self, name) < 1:
                raise NginxConfigError(f"{name} must be at least 1")
        if self.worker_processes is not None and self.worker_processes < 1:
            raise NginxConfigError("worker_processes must be at least 1 (or None for one per core)")

    @property
    def servers(self) -> dict[str, list[str]]:
        """Each model's replicas as nginx ``server`` addresses."""
        return dict(self._servers)

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """Where clients reach nginx."""
        return f"http://{self.listen}"

    @property
    def revision(self) -> str:
        """A short digest of everything rendered; ``/health`` reports it, so a reload can tell
        when nginx really serves the new configuration."""
        fields = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name not in ("upstreams", "_servers", "api_keys")
        }
        fields.update(
            servers=self._servers, api_keys=sorted(self.api_keys), prefix=str(self.prefix)
        )
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
        return digest.hexdigest()[:12]


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir()),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_config(config: NginxConfig) -> str:
    """The complete ``nginx.conf`` for ``config``."""
    names = sorted(config.servers)
    models = [
        {"name": name, "upstream": f"slurm_llm_{index}", "servers": config.servers[name]}
        for index, name in enumerate(names)
    ]
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            revision=config.revision,
            prefix=str(config.prefix),
            user=config.user,
            worker_processes=config.worker_processes or "auto",
            worker_connections=config.worker_connections,
            client_max_body_mb=config.client_max_body_mb,
            balancing=config.balancing,
            api_keys=sorted(config.api_keys),
            models=models,
            model_names_json=json.dumps(names),
            model_names_text=", ".join(names) or "(none)",
            max_fails=config.max_fails,
            fail_timeout_s=config.fail_timeout_s,
            keepalive=config.keepalive,
            listen=config.listen,
            read_timeout_s=config.read_timeout_s,
            next_upstream_tries=config.next_upstream_tries,
        )
    )
