"""The rendered nginx configuration, checked against stored references.

A reference is the whole ``nginx.conf`` for a representative set of models; a change in what we
ask nginx to do shows up as a reviewed diff of these files. Regenerate them with
``SLURM_LLM_UPDATE_REFERENCES=1 pytest tests/unit/nginx``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slurm_llm import _debian
from slurm_llm.nginx import NginxConfig, NginxConfigError, NginxError, render_config
from slurm_llm.nginx import _server as nginx_server
from slurm_llm.nginx._config import template_dir

REFERENCES = Path(__file__).parent / "reference"
PREFIX = Path("/srv/slurm-llm/nginx")

CASES: dict[str, NginxConfig] = {
    "two-models-least-conn": NginxConfig(
        {
            "llama-3.1-8b": ["http://10.0.0.7:24001", "http://10.0.0.8:24001"],
            "meta-llama/Llama-3.2-1B-Instruct": ["http://gpu-node-3:24007/"],
            "llama-3.1-70b": [],
        },
        PREFIX,
        host="0.0.0.0",
        port=8080,
    ),
    "session-affinity-with-keys": NginxConfig(
        {"smollm2-135m": ["http://127.0.0.1:24005", "http://[::1]:24006"]},
        PREFIX,
        port=9000,
        balancing="session",
        api_keys=["sk-team-b", "sk-team-a"],
        worker_processes=2,
        user="llm",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_config_matches_the_reference(case: str) -> None:
    actual = render_config(CASES[case])
    path = REFERENCES / f"{case}.conf"
    if os.environ.get("SLURM_LLM_UPDATE_REFERENCES"):
        path.write_text(actual)
    assert actual == path.read_text()


def test_the_template_is_found_in_the_checkout() -> None:
    assert (template_dir() / "slurm-llm.conf.j2").is_file()


def test_each_model_is_a_path_prefix_proxied_to_v1_of_its_own_upstream() -> None:
    text = render_config(CASES["two-models-least-conn"])
    assert "location ^~ /meta-llama/Llama-3.2-1B-Instruct/ {" in text
    assert "proxy_pass http://slurm_llm_2/;" in text  # the prefix is replaced by "/"
    assert "server gpu-node-3:24007 max_fails=3 fail_timeout=10s;" in text
    # A model without replicas answers 503 instead of falling through to "unknown model".
    assert "model llama-3.1-70b has no ready replica" in text
    assert "upstream slurm_llm_0" not in text


@pytest.mark.parametrize(
    "name",
    ["bad name", "a;b", "x{y}", "../etc", "m/../n", "a//b", "trailing/", "/lead", "$var", "h'q"],
)
def test_names_nginx_would_misread_are_refused(name: str) -> None:
    with pytest.raises(NginxConfigError, match="cannot be an nginx path prefix"):
        NginxConfig({name: []}, PREFIX)


def test_health_is_not_a_model_name() -> None:
    with pytest.raises(NginxConfigError, match="taken by nginx's /health"):
        NginxConfig({"health": []}, PREFIX)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://10.0.0.1:8000", "must be 'http://host:port'"),
        ("http://10.0.0.1", "must be 'http://host:port'"),
        ("http://10.0.0.1:8000/v1", "the path comes from the request"),
        ("10.0.0.1:8000", "must be 'http://host:port'"),
        ("http://10.0.0.1:99999", "not a URL"),
    ],
)
def test_upstreams_must_be_plain_base_urls(url: str, why: str) -> None:
    with pytest.raises(NginxConfigError, match=why):
        NginxConfig({"m": [url]}, PREFIX)


def test_a_single_url_string_is_not_taken_for_a_list_of_characters() -> None:
    with pytest.raises(NginxConfigError, match="a list of URLs"):
        NginxConfig({"m": "http://10.0.0.1:8000"}, PREFIX)


def test_keys_and_prefixes_with_nginx_syntax_are_refused() -> None:
    with pytest.raises(NginxConfigError, match="API key"):
        NginxConfig({}, PREFIX, api_keys=['sk-"; return 200'])
    with pytest.raises(NginxConfigError, match="must not contain spaces"):
        NginxConfig({}, Path("/srv/my prefix"))
    with pytest.raises(NginxConfigError, match="absolute"):
        NginxConfig({}, Path("relative"))
    with pytest.raises(NginxConfigError, match="balancing"):
        NginxConfig({}, PREFIX, balancing="random")  # type: ignore[arg-type]


def test_the_revision_follows_every_change() -> None:
    base = CASES["two-models-least-conn"]
    same = NginxConfig(dict(base.upstreams), PREFIX, host="0.0.0.0", port=8080)
    assert same.revision == base.revision
    moved = NginxConfig({**base.upstreams, "llama-3.1-70b": ["http://10.0.0.9:1"]}, PREFIX)
    assert moved.revision != base.revision


def test_without_root_the_error_names_the_package_and_the_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_debian, "missing_programs", lambda programs, search_path="": ["nginx"])
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(NginxError) as caught:
        nginx_server.ensure_nginx()
    assert "nginx not found" in str(caught.value)
    assert "apt-get install -y -qq --no-install-recommends nginx" in str(caught.value)
