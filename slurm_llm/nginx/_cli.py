"""``slurm-llm nginx render|run|reload``: nginx in front of the registry's replicas, from a shell.

``run`` keeps the options it was started with in ``<prefix>/slurm-llm.json``, so ``reload``
from another shell renders the same front end, with the replicas of now.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from slurm_llm._api_keys import load_api_keys
from slurm_llm._paths import home_dir
from slurm_llm.jobs._front_end_job import add_submit_arguments, announce, submitted_options
from slurm_llm.nginx._config import NginxConfig
from slurm_llm.nginx._errors import NginxError
from slurm_llm.nginx._follow import follow_registry, registry_upstreams
from slurm_llm.nginx._job import launch_nginx
from slurm_llm.nginx._server import NginxServer

console = Console()
SETTINGS = "slurm-llm.json"
OPTIONS = ("host", "port", "deployment", "balancing", "api_keys_file")


def prefix_of(args: argparse.Namespace) -> Path:
    return Path(args.prefix).expanduser().resolve() if args.prefix else home_dir() / "nginx"


def config_from(settings: dict[str, Any], prefix: Path) -> NginxConfig:
    keys_file = settings.get("api_keys_file")
    return NginxConfig(
        upstreams=registry_upstreams(deployment=settings.get("deployment")),
        prefix=prefix,
        host=settings["host"],
        port=settings["port"],
        balancing=settings["balancing"],
        api_keys=sorted(load_api_keys(Path(keys_file) if keys_file else None)),
    )


def describe(config: NginxConfig) -> str:
    served = ", ".join(f"{m} ({len(urls)})" for m, urls in config.upstreams.items()) or "none yet"
    return f"models (replicas): {served}; clients use {config.url}/<model>/v1"


def cmd_render(args: argparse.Namespace) -> int:
    config = config_from(vars(args), prefix_of(args))
    path = NginxServer(config).write_config()
    console.print(f"Wrote {path} (checked with nginx -t); {describe(config)}", highlight=False)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.submit:
        return submit(args)
    prefix = prefix_of(args)
    settings = {name: getattr(args, name) for name in OPTIONS}
    with NginxServer(config_from(settings, prefix)) as server:
        (prefix / SETTINGS).write_text(json.dumps(settings))
        console.print(f"nginx serves on {server.url}; {describe(server.config)}. Ctrl-C stops.",
                      highlight=False)  # fmt: skip

        def reloaded(config: NginxConfig) -> None:
            console.print(f"Reloaded: {describe(config)}", highlight=False)

        follow_registry(server, deployment=args.deployment, on_reload=reloaded)
    return 0


def submit(args: argparse.Namespace) -> int:
    keys = load_api_keys(Path(args.api_keys_file) if args.api_keys_file else None)
    job = launch_nginx(args.deployment, balancing=args.balancing, api_keys=sorted(keys),
                       **submitted_options(args))  # fmt: skip
    console.print(announce(job, "{url}/<model>/v1"), highlight=False)
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    prefix = prefix_of(args)
    try:
        settings = json.loads((prefix / SETTINGS).read_text())
    except FileNotFoundError:
        settings = {}
    if not settings:
        raise NginxError(
            f"no nginx was started under {prefix}; start one with: slurm-llm nginx run"
        )
    config = config_from(settings, prefix)
    NginxServer.attach(config).reload(config)
    console.print(f"Reloaded {config.url}; {describe(config)}", highlight=False)
    return 0


def add_nginx_command(commands: Any) -> None:
    """Adds ``nginx`` to the main CLI's sub-commands (the result of ``add_subparsers``)."""
    nginx = commands.add_parser(
        "nginx",
        help="nginx in front of every ready replica (an alternative to `slurm-llm router`).",
        description="Real nginx (Debian's, installed on first use) under a user prefix "
        "($SLURM_LLM_HOME/nginx by default): each model at http://host:port/<model>/v1.",
    )
    actions = nginx.add_subparsers(dest="action", required=True, metavar="ACTION")
    handlers = {
        "render": (cmd_render, "write and check nginx.conf from the registry"),
        "run": (cmd_run, "start nginx and reload it whenever replicas change"),
        "reload": (cmd_reload, "re-render a running nginx from the registry, gracefully"),
    }
    for action, (handler, text) in handlers.items():
        sub = actions.add_parser(action, help=text, description=text)
        sub.set_defaults(handler=handler)
        sub.add_argument("--prefix", default=None, help="nginx's directory")
        if action == "reload":
            continue
        sub.add_argument("--host", default="127.0.0.1", help="address to listen on")
        sub.add_argument("--port", type=int, default=8080)
        sub.add_argument("--deployment", default=None, help="only this deployment's replicas")
        sub.add_argument("--balancing", choices=("least_conn", "session"), default="least_conn",
                         help="session: consistent hash of X-Session-Id")  # fmt: skip
        sub.add_argument("--api-keys-file", default=None,
                         help="one key per line; $SLURM_LLM_API_KEYS counts too")  # fmt: skip
        if action == "run":
            add_submit_arguments(sub, "nginx")
