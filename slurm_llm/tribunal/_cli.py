"""``slurm-llm verdicts``: the verdict log, queried from a shell."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from slurm_llm.tribunal._log import VerdictLog

console = Console()


def cmd_verdicts(args: argparse.Namespace) -> int:
    log = VerdictLog(Path(args.log) if args.log else None)
    read = log.read()
    runs = [
        run for run in read.runs
        if (args.outcome is None or run.get("outcome") == args.outcome)
        and (args.laws is None or str(run.get("laws", "")).startswith(args.laws))
        and (args.mode is None or run.get("mode") == args.mode)
    ][-args.last :]  # fmt: skip
    if args.json:
        for run in runs:
            print(json.dumps(run))
        return 0
    table = Table(title=f"Tribunal runs in {log.path} ({len(runs)} shown of {len(read.runs)})")
    for column in ("started", "laws", "mode", "rounds", "last verdicts", "outcome", "prompt"):
        table.add_column(column, overflow="fold")
    for run in runs:
        table.add_row(*row(run))
    console.print(table)
    if read.damaged_lines:
        console.print(f"{read.damaged_lines} line(s) cut short by a crash were skipped.")
    return 0


def row(run: dict[str, Any]) -> list[str]:
    rounds = run.get("rounds") or []
    last = rounds[-1]["verdicts"] if rounds else []
    verdicts = ", ".join(f"{v['law']}:{v['outcome']}" for v in last) or "-"
    started = run.get("started")
    when = "?"
    if isinstance(started, int | float):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    return [when, str(run.get("laws")), str(run.get("mode")), str(len(rounds)), verdicts,
            str(run.get("outcome")), str(run.get("prompt", ""))[:80]]  # fmt: skip


def add_verdicts_command(commands: Any) -> None:
    text = "Show tribunal runs from the verdict log."
    verdicts = commands.add_parser("verdicts", help=text, description=text)
    verdicts.set_defaults(handler=cmd_verdicts)
    verdicts.add_argument("--log", default=None, help="default <home>/tribunal/verdicts.jsonl")
    verdicts.add_argument("--last", type=int, default=20, help="newest N runs")
    verdicts.add_argument("--outcome", choices=("accepted", "rejected", "not judged"))
    verdicts.add_argument("--mode", choices=("full", "reduced", "base-only"))
    verdicts.add_argument("--laws", default=None, help="book name, or name@version")
    verdicts.add_argument("--json", action="store_true", help="one JSON run per line")
