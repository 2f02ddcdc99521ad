"""``slurm-llm batch``: durable batches from a shell (submit, status, list, cancel, results),
and ``batch run`` for a self-contained run that deploys, runs the batch and stops everything."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import openai
from openai.types import Batch
from rich.console import Console
from rich.table import Table

from slurm_llm._errors import SlurmLLMError
from slurm_llm.router._batch_files import download, run_file, submit, submit_run_file, wait
from slurm_llm.spec._model_spec import load_spec

console = Console()
DEFAULT_URL = "http://127.0.0.1:8000"


def client_of(args: argparse.Namespace) -> openai.OpenAI:
    key = args.api_key or os.environ.get("SLURM_LLM_API_KEY") or "none"
    return openai.OpenAI(base_url=f"{args.url.rstrip('/')}/v1", api_key=key, max_retries=2)


def show(batch: Batch) -> None:
    counts = batch.request_counts
    done = (
        f"{counts.completed} answered, {counts.failed} failed of {counts.total}" if counts else ""
    )
    console.print(f"{batch.id}: [bold]{batch.status}[/bold] {done}")
    for error in (batch.errors.data or []) if batch.errors else []:
        where = f"line {error.line}: " if error.line else ""
        console.print(f"  [red]{where}{error.code}[/red] {error.message}")


def cmd_batch(args: argparse.Namespace) -> int:
    if args.action == "run":
        return cmd_run(args)
    needs_id = args.action in ("status", "cancel", "results")
    if needs_id and not args.target:
        raise SlurmLLMError(f"`slurm-llm batch {args.action}` needs the batch's id")
    if args.action == "submit" and not args.target:
        raise SlurmLLMError("`slurm-llm batch submit` needs the input file (JSON lines)")
    with client_of(args) as client:
        try:
            return run_action(client, args)
        except openai.NotFoundError:
            raise SlurmLLMError(f"the router at {args.url} has no batch {args.target!r} of "
                                "this key's") from None  # fmt: skip
        except openai.APIConnectionError:
            raise SlurmLLMError(f"no router answers at {args.url}: start one with "
                                "`slurm-llm router`, or give --url") from None  # fmt: skip
        except openai.APIStatusError as exc:  # the router says what is wrong
            body = exc.body if isinstance(exc.body, dict) else {}
            raise SlurmLLMError(str(body.get("message") or exc)) from None


def run_action(client: openai.OpenAI, args: argparse.Namespace) -> int:
    if args.action == "submit":
        path = Path(args.target)
        if not path.is_file():
            raise SlurmLLMError(f"no file {path}")
        batch = submit(client, path)
        console.print(f"submitted {batch.id} ({path}); follow it with "
                      f"`slurm-llm batch status {batch.id}`")  # fmt: skip
        if args.wait:
            batch = wait(client, batch.id)
            show(batch)
            for written in download(client, batch, path):
                console.print(f"wrote {written}")
        return 0 if not args.wait or batch.status == "completed" else 1
    if args.action == "status":
        show(client.batches.retrieve(args.target))
    elif args.action == "cancel":
        show(client.batches.cancel(args.target))
    elif args.action == "results":
        batch = client.batches.retrieve(args.target)
        if batch.output_file_id is None and batch.error_file_id is None:
            raise SlurmLLMError(f"{batch.id} is {batch.status}: no results yet")
        for written in download(client, batch, Path(args.into) / batch.id):
            console.print(f"wrote {written}")
    else:
        table = Table("id", "status", "answered", "failed", "total", "created")
        for batch in client.batches.list():
            counts: Any = batch.request_counts
            table.add_row(batch.id, batch.status, str(counts.completed if counts else "-"),
                          str(counts.failed if counts else "-"),
                          str(counts.total if counts else "-"), str(batch.created_at))  # fmt: skip
        console.print(table)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if not args.target or not args.spec:
        raise SlurmLLMError("`slurm-llm batch run` needs the input file and --spec")
    path = Path(args.target)
    if not path.is_file():
        raise SlurmLLMError(f"no file {path}")
    spec = load_spec(args.spec)
    if args.submit:
        job = submit_run_file(path, spec, args.replicas, executor=args.executor)
        console.print(f"submitted as job {getattr(job, 'job_id', '?')}; the answers go next "
                      f"to {path}")  # fmt: skip
        return 0
    done = run_file(path, spec, args.replicas, executor=args.executor)
    show(done.batch)
    for written in done.written:
        console.print(f"wrote {written}")
    return 0 if done.batch.status == "completed" else 1


def add_batch_command(commands: Any) -> None:
    text = "durable batches (OpenAI's Batch API): submit a JSON-lines file, follow it, get results"
    batch = commands.add_parser("batch", help=text, description=text)
    batch.add_argument("action", choices=["submit", "status", "list", "cancel", "results", "run"])
    batch.add_argument("target", nargs="?", help="the input file (submit, run) or a batch id")
    batch.add_argument("--url", default=DEFAULT_URL, help=f"the router (default {DEFAULT_URL})")
    batch.add_argument("--api-key", default=None, help="default: $SLURM_LLM_API_KEY")
    batch.add_argument("--wait", action="store_true", help="submit: follow it to its end, "
                       "then write the answers next to the input")  # fmt: skip
    batch.add_argument("--into", default=".", help="results: the folder for ID.output.jsonl")
    run = batch.add_argument_group("run: deploy, run the batch, stop everything")
    run.add_argument("--spec", help="a preset name or a spec file")
    run.add_argument("--replicas", type=int, default=1)
    run.add_argument("--executor", choices=("auto", "slurm", "local"), default="auto")
    run.add_argument("--submit", action="store_true",
                     help="as one job holding every replica's resources")  # fmt: skip
    batch.set_defaults(handler=cmd_batch)
