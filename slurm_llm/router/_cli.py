"""``slurm-llm router``: the gateway from a shell."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from slurm_llm._api_keys import load_api_keys, read_keys_file
from slurm_llm._errors import SlurmLLMError
from slurm_llm.jobs._front_end_job import add_submit_arguments, announce, submitted_options
from slurm_llm.router._auth import Callers
from slurm_llm.router._config import RouterConfig, default_workers
from slurm_llm.router._job import launch_router
from slurm_llm.router._policies import POLICIES
from slurm_llm.router._probes import ProbeConfig
from slurm_llm.router._server import serve

console = Console()


def parse_backend(text: str) -> tuple[str, str]:
    model, _, url = text.partition("=")
    if not model or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected MODEL=http://host:port, got {text!r}")
    return model, url.rstrip("/")


def slots(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected a whole number of slots (0 or more), got {text!r}"
        )
    return int(text)


def workers(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of workers (1 or more), got {text!r}")
    return int(text)


def config_from(args: argparse.Namespace) -> RouterConfig:
    keys_file = Path(args.api_keys_file).resolve() if args.api_keys_file else None
    if keys_file is not None and not read_keys_file(keys_file):  # unreadable or invalid: raises
        raise SlurmLLMError(f"the API key file {keys_file} holds no key")
    return RouterConfig(
        policy=args.policy,
        replica_limit=args.replica_limit,
        max_queue=args.max_queue,
        queue_timeout_s=args.queue_timeout,
        deadline_s=args.deadline,
        max_body_bytes=args.max_body_mb * 2**20,
        prefix_affinity_chars=args.prefix_affinity,
        api_keys=load_api_keys(),  # SLURM_LLM_API_KEYS
        keys_file=keys_file,
        batch_aging_s=args.batch_aging,
        interactive_reserve=args.interactive_reserve,
        cold_start=args.cold_start,
        wake_timeout_s=args.wake_timeout,
        probes=ProbeConfig(interval_s=args.probe_interval),
        stream_failover=not args.no_stream_failover,
        drain_s=args.drain,
        verdict_log=Path(args.verdict_log) if args.verdict_log else None,
        ui=not args.no_ui,
        workers=args.workers
        if args.workers is not None
        else (0 if args.submit else default_workers()),
    )


def cmd_router(args: argparse.Namespace) -> int:
    config = config_from(args)
    if args.submit:
        return submit(args, config)
    source = (
        ", ".join(f"{m}={u}" for m, u in args.backend)
        if args.backend
        else ("every deployment" if args.deployment is None else f"deployment {args.deployment}")
    )
    callers = len(Callers(config.api_keys, config.keys_file).identities)
    keys = f", {callers} API key(s)" if callers else ", no API key needed"

    def serving() -> None:  # once it listens: the address printed can be reached
        console.print(
            f"Routing {source} on http://{args.host}:{args.port}/v1 "
            f"({config.policy}{keys}; Ctrl-C stops)",
            highlight=False,
        )
        if config.ui:
            console.print(f"Console: http://{args.host}:{args.port}/ui/", highlight=False)

    serve(args.host, args.port, deployment=args.deployment, config=config, static=args.backend,
          on_serving=serving, reuse_port=args.reuse_port)  # fmt: skip
    return 0


def submit(args: argparse.Namespace, config: RouterConfig) -> int:
    if args.backend:
        raise SlurmLLMError("--submit routes registry replicas only; drop --backend")
    job = launch_router(args.deployment, config=config, **submitted_options(args))
    console.print(announce(job, "{url}/v1"), highlight=False)
    return 0


def add_router_command(commands: Any) -> None:
    """Adds ``router`` to the main CLI's sub-commands (the result of ``add_subparsers``)."""
    text = "Serve one OpenAI- and TGI-compatible endpoint in front of every ready replica."
    router = commands.add_parser("router", help=text, description=text)
    router.set_defaults(handler=cmd_router)
    router.add_argument("--host", default="127.0.0.1", help="address to listen on")
    router.add_argument("--port", type=int, default=8000)
    router.add_argument("--deployment", default=None, help="only this deployment's replicas")
    router.add_argument(
        "--backend", type=parse_backend, action="append", default=[], metavar="MODEL=URL",
        help="a server started by other means (repeatable); without --deployment, only these",
    )  # fmt: skip
    router.add_argument("--policy", choices=POLICIES, default="power-of-two")
    router.add_argument(
        "--replica-limit", type=int, default=None,
        help="requests sent to a replica at once (default: its engine's slots; fixed backends 8)",
    )  # fmt: skip
    router.add_argument("--max-queue", type=int, default=1024, help="waiting requests per model")
    router.add_argument("--queue-timeout", type=float, default=60.0, help="seconds before 503")
    router.add_argument("--deadline", type=float, default=600.0, help="seconds per request")
    router.add_argument("--max-body-mb", type=int, default=4)
    router.add_argument(
        "--prefix-affinity", type=int, default=0, metavar="CHARS",
        help="send prompts that share their first CHARS characters to the same replica",
    )  # fmt: skip
    router.add_argument(
        "--api-keys-file", default=None,
        help="named keys with limits (TOML, made by `slurm-llm keys`) or one key per line; "
        "re-read when it changes; keys in $SLURM_LLM_API_KEYS (comma-separated) count too",
    )  # fmt: skip
    router.add_argument(
        "--batch-aging", type=float, default=30.0, metavar="SECONDS",
        help="batch-class requests queue as if they arrived this much later than interactive "
        "ones (and so never starve)",
    )  # fmt: skip
    router.add_argument(
        "--interactive-reserve", type=slots, default=0, metavar="SLOTS",
        help="slots of each replica that batch-class requests leave free while interactive "
        "requests are coming (one in the last 30 s), so a chat need not wait for a batch "
        "answer to end; batch work keeps at least one slot",
    )  # fmt: skip
    router.add_argument(
        "--cold-start", choices=("wait", "reject"), default="wait",
        help="a non-streamed request for a model scaled to zero: wait for it to start (up to "
        "--wake-timeout), or get 503 with Retry-After from its usual start-up time at once; "
        "streamed requests always wait, with progress comments",
    )  # fmt: skip
    router.add_argument(
        "--wake-timeout", type=float, default=600.0,
        help="longest a request waits for a model scaled to zero to start (seconds)",
    )  # fmt: skip
    router.add_argument(
        "--probe-interval", type=float, default=10.0, help="seconds between deep probes; 0: off"
    )
    router.add_argument(
        "--drain", type=float, default=30.0, metavar="SECONDS",
        help="at SIGTERM, stop listening and give requests in flight this long to finish",
    )  # fmt: skip
    router.add_argument(
        "--reuse-port", action="store_true",
        help="listen even where another router listens (SO_REUSEPORT): start the new router, "
        "then stop the old one, and a restart refuses no connection",
    )  # fmt: skip
    router.add_argument(
        "--workers", type=workers, default=None, metavar="N",
        help="router processes serving the port (one core each), which split every replica's "
        "slots between them; default $SLURM_LLM_ROUTER_WORKERS or 1, and with --submit one per "
        "CPU of the job",
    )  # fmt: skip
    router.add_argument(
        "--no-stream-failover", action="store_true",
        help="end a stream whose replica breaks off with an error event, instead of continuing "
        "it on another replica",
    )  # fmt: skip
    router.add_argument(
        "--no-ui", action="store_true", help="serve no web console at /ui (its APIs stay)"
    )
    router.add_argument(
        "--verdict-log", default=None, help="tribunal runs (default <home>/tribunal/verdicts.jsonl)"
    )
    add_submit_arguments(router, "router")
