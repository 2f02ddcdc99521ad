"""``slurm-llm keys`` (named API keys with limits), ``slurm-llm usage`` (who used what) and
``slurm-llm chargeback`` (the GPU-hours behind it)."""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from slurm_llm._api_keys import KeysFile
from slurm_llm._errors import SlurmLLMError
from slurm_llm._paths import home_dir
from slurm_llm._usage import UsageRecord, read_usage, usage_dir
from slurm_llm.router._chargeback import CHARGE_GROUPS, chargeback_report

console = Console()
LIMITS = ("requests_per_minute", "tokens_per_minute", "concurrent_requests", "tokens_per_day",
          "tokens_per_month")  # fmt: skip
GROUPS: dict[str, Callable[[UsageRecord], str]] = {
    "key": lambda r: r.key, "account": lambda r: r.account or "-",
    "model": lambda r: r.model, "priority": lambda r: r.priority,
}  # fmt: skip
FIGURES = ("requests", "failed", "prompt_tokens", "completion_tokens", "latency_s")


def default_keys_file() -> Path:
    return home_dir() / "keys.toml"


def cmd_keys(args: argparse.Namespace) -> int:
    keys = KeysFile(Path(args.file) if args.file else default_keys_file())
    if args.action == "add":
        settings: dict[str, object] = {
            "account": args.account, "priority": args.priority, "operator": args.operator or None,
        }  # fmt: skip
        if args.models:
            settings["models"] = tuple(args.models.split(","))
        settings.update({limit: getattr(args, limit) for limit in LIMITS})
        key = keys.add(args.name, **{k: v for k, v in settings.items() if v is not None})
        console.print(f"added {args.name!r} to {keys.path}; its key (shown only now):")
        print(key)
    elif args.action == "revoke":
        keys.revoke(args.name)
        console.print(f"revoked {args.name!r}; a router reading {keys.path} refuses it within 1 s")
    else:
        table = Table(
            "name", "account", "models", "priority", "operator", "limits", "created", "revoked"
        )
        for identity in keys.identities().values():
            limits = ", ".join(f"{n}={v}" for n in LIMITS if (v := getattr(identity, n)))
            table.add_row(identity.name, identity.account or "-", ",".join(identity.models),
                          identity.priority, "yes" if identity.operator else "",
                          limits or "none", identity.created or "-",
                          identity.revoked or "")  # fmt: skip
        console.print(table)
    return 0


def parse_since(text: str) -> float:
    """``7d``, ``12h``, ``30m`` ago, or a date (``2026-12-01``, UTC) or ISO time."""
    if match := re.fullmatch(r"(\d+)([dhm])", text):
        seconds = {"d": 86400, "h": 3600, "m": 60}[match.group(2)]
        return time.time() - int(match.group(1)) * seconds
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise SlurmLLMError(
            f"--since {text!r}: use 7d, 12h, 30m or a date like 2026-12-01"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def summarise(records: Iterable[UsageRecord], by: str) -> list[dict[str, object]]:
    """Requests, failures, tokens and latency per group, largest token use first."""
    rows: dict[str, dict[str, float]] = {}
    for record in records:
        row = rows.setdefault(GROUPS[by](record), dict.fromkeys(FIGURES, 0.0))
        row["requests"] += 1
        row["failed"] += record.status != 200
        row["prompt_tokens"] += record.prompt_tokens
        row["completion_tokens"] += record.completion_tokens
        row["latency_s"] += record.latency_s
    out = [{by: group, "requests": int(row["requests"]), "failed": int(row["failed"]),
            "prompt_tokens": int(row["prompt_tokens"]),
            "completion_tokens": int(row["completion_tokens"]),
            "tokens": int(row["prompt_tokens"] + row["completion_tokens"]),
            "mean_latency_s": round(row["latency_s"] / row["requests"], 3)}
           for group, row in rows.items()]  # fmt: skip
    return sorted(out, key=lambda row: -int(str(row["tokens"])))


def cmd_usage(args: argparse.Namespace) -> int:
    folder = Path(args.dir) if args.dir else None
    rows = summarise(read_usage(folder, parse_since(args.since) if args.since else 0.0), args.by)
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else [args.by])
        writer.writeheader()
        writer.writerows(rows)
        return 0
    if not rows:
        console.print("no usage recorded" + (f" since {args.since}" if args.since else ""))
        return 0
    since = f" since {args.since}" if args.since else ""
    table = Table(*rows[0].keys(), title=f"usage by {args.by}{since}")
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    console.print(table)
    return 0


def cmd_chargeback(args: argparse.Namespace) -> int:
    folder = Path(args.dir) if args.dir else usage_dir()
    until = parse_since(args.until) if args.until else time.time()
    report = chargeback_report(folder, parse_since(args.since), until, args.by)
    rows = [{args.by: c.group, "tokens": c.tokens, "gpu_hours": round(c.gpu_hours, 6),
             "cpu_hours": round(c.cpu_hours, 6)} for c in report.charges]  # fmt: skip
    if args.csv:
        writer = csv.DictWriter(
            sys.stdout, fieldnames=[args.by, "tokens", "gpu_hours", "cpu_hours"]
        )
        writer.writeheader()
        writer.writerows(rows)
        return 0
    period = f"since {args.since}" + (f" until {args.until}" if args.until else "")
    table = Table("deployment", "hours from", "jobs", "GPU-hours", "CPU-hours", "tokens",
                  title=f"deployments {period}")  # fmt: skip
    for d in report.deployments:
        table.add_row(d.deployment, d.source, str(d.jobs), f"{d.gpu_hours:.4f}",
                      f"{d.cpu_hours:.4f}", str(d.tokens))  # fmt: skip
    console.print(table)
    table = Table(
        args.by, "tokens", "GPU-hours", "CPU-hours", title=f"chargeback by {args.by} {period}"
    )
    for c in report.charges:
        table.add_row(c.group, str(c.tokens), f"{c.gpu_hours:.4f}", f"{c.cpu_hours:.4f}")
    console.print(table)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    return 0


def add_accounting_commands(commands: Any) -> None:
    """Adds ``keys`` and ``usage`` to the main CLI's sub-commands."""
    keys = commands.add_parser("keys", help="add, list and revoke named API keys with limits")
    keys.add_argument("action", choices=["add", "list", "revoke"])
    keys.add_argument("name", nargs="?", help="the key's holder (add, revoke)")
    keys.add_argument("--file", help="the keys file (default: $SLURM_LLM_HOME/keys.toml); "
                      "give it to `slurm-llm router --api-keys-file`")  # fmt: skip
    keys.add_argument("--account", help="the SLURM account its usage is charged to")
    keys.add_argument("--models", help="comma-separated models it may use (default: all)")
    keys.add_argument("--priority", choices=["interactive", "batch"], default=None)
    keys.add_argument("--operator", action="store_true",
                      help="may scale and stop deployments and read every key's usage and the "
                      "verdict log in the console")  # fmt: skip
    for limit in LIMITS:
        keys.add_argument(f"--{limit.replace('_', '-')}", dest=limit, type=int, default=None)
    keys.set_defaults(handler=checked_keys)
    usage = commands.add_parser("usage", help="requests and tokens by key, account or model")
    usage.add_argument("--since", help="7d, 12h, 30m, or a date such as 2026-12-01 (UTC)")
    usage.add_argument("--by", choices=list(GROUPS), default="key")
    usage.add_argument("--csv", action="store_true", help="CSV on stdout instead of a table")
    usage.add_argument("--dir", help="the usage folder (default: $SLURM_LLM_HOME/usage)")
    usage.set_defaults(handler=cmd_usage)
    charge = commands.add_parser(
        "chargeback", help="each deployment's GPU- and CPU-hours shared out by token use"
    )
    charge.add_argument("--since", default="30d", help="7d, 12h, or a date (default: 30d)")
    charge.add_argument("--until", help="a date or time (UTC); default: now")
    charge.add_argument("--by", choices=list(CHARGE_GROUPS), default="account")
    charge.add_argument("--csv", action="store_true", help="CSV on stdout instead of tables")
    charge.add_argument("--dir", help="the usage folder (default: $SLURM_LLM_HOME/usage)")
    charge.set_defaults(handler=cmd_chargeback)


def checked_keys(args: argparse.Namespace) -> int:
    if args.action in ("add", "revoke") and not args.name:
        raise SlurmLLMError(f"`slurm-llm keys {args.action}` needs the key's name")
    return cmd_keys(args)
