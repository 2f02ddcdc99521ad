"""Generates the reference pages at build time (mkdocs-gen-files), from the code itself: the spec
fields from the pydantic models' descriptions, the CLI from its argparse parser, the HTTP API
from the router's OpenAPI document, the metrics from a router's Prometheus registry, and the
environment variables from the table below (``tests/unit/test_docs.py`` checks that every
variable the code reads is in it). Nothing here is written by hand twice. The committed
benchmark results are published beside the pages that cite them, under ``results/``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mkdocs_gen_files
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from slurm_llm import Autoscale, ModelSpec, SlurmOptions
from slurm_llm.cli import build_parser
from slurm_llm.router import BackendPool, RouterConfig, build_app
from slurm_llm.router._openapi import openapi_document
from slurm_llm.router._state import STATE

# (name, who reads or sets it, what it means). Read by slurm-llm first, then set by it for the
# engines it starts.
ENVIRONMENT: tuple[tuple[str, str, str], ...] = (
    ("SLURM_LLM_HOME", "every command, job and front end",
     "Where slurm-llm keeps its state (registry, deployments, controller records, events, "
     "logs); default `~/.slurm-llm`. Must be on storage every node sees."),
    ("SLURM_LLM_HOST", "the launcher, in a replica's or front end's job",
     "The address a replica binds and publishes; default: the node's IP (`127.0.0.1` for "
     "local jobs). Set it where a node has several networks and clients must use one."),
    ("SLURM_LLM_API_KEYS", "`slurm-llm router`, `slurm-llm nginx`",
     "Comma-separated API keys the front end accepts, added to `--api-keys-file`. "
     "Plural: the keys a server accepts."),
    ("SLURM_LLM_API_KEY", "`slurm-llm bench`, `slurm-llm batch`",
     "The one key a client sends (`--api-key` wins). Singular: what a client presents."),
    ("SLURM_LLM_CLUSTER_DIR", "`slurm-llm cluster`",
     "Where the local SLURM cluster keeps its configuration, state and logs; default "
     "`~/.slurm-llm/cluster`."),
    ("SLURM_CONF", "SLURM's commands, and slurm-llm through them",
     "Which cluster `sbatch`, `squeue`, `sacct` and `scontrol` talk to; `slurm-llm cluster up` "
     "prints the export for the local cluster."),
    ("SLURM_JOB_ID", "the launcher (set by SLURM)", "The job a replica runs in, for its record."),
    ("SLURM_JOB_END_TIME", "the launcher (set by SLURM)",
     "When the job's wall-time ends, to hand over before it; asked of `squeue` when unset."),
    ("SLURM_CPUS_PER_TASK", "the launcher (set by SLURM)",
     "The cores the job was given; a CPU engine's threads and core lease follow it."),
    ("CUDA_VISIBLE_DEVICES", "the launcher (set by SLURM)",
     "The GPUs the job sees; a replica that asked for GPUs and sees none fails, saying so."),
    ("SUBMITIT_EXECUTOR", "the launcher (set by submitit)",
     "`local` for jobs of the local executor, whose replicas bind loopback."),
    ("PATH", "`slurm-llm cluster`, nginx", "Searched for the SLURM daemons and nginx; the "
     "system's `sbin` folders are added when missing."),
    ("SLURM_LLM_ROUTER_WORKERS", "`slurm-llm router`, `RouterThread`",
     "Router processes serving the port when `--workers` (`RouterConfig.workers`) does not say; "
     "default 1. A site sets it where its routers have cores to spare."),
    ("PROMETHEUS_MULTIPROC_DIR", "set for `slurm-llm router --workers N`",
     "The folder, made and removed by the router's supervisor, where its workers' metrics meet "
     "(prometheus-client's multiprocess mode); a worker that finds it set sums them at "
     "`/metrics`."),
    ("VLLM_HOST_IP", "set for vLLM", "The replica's address, for vLLM's multi-node rendezvous."),
    ("VLLM_NO_USAGE_STATS", "set for vLLM", "`1`: no usage reports from compute nodes."),
    ("VLLM_CPU_KVCACHE_SPACE", "set for vLLM on CPU",
     "GiB of KV cache: half of what the job's memory leaves after 2 GiB."),
    ("OMP_NUM_THREADS", "set for vLLM on CPU", "The job's cores."),
    ("HF_HUB_OFFLINE", "set for the GGUF converter", "`1`: never reach for the hub."),
    ("TRANSFORMERS_OFFLINE", "set for the GGUF converter", "`1`: never reach for the hub."),
    ("HF_HUB_DISABLE_TELEMETRY", "set for the GGUF converter", "`1`: no telemetry."),
)  # fmt: skip


def spec_page() -> str:
    lines = [
        "# Spec fields",
        "",
        "A spec is a TOML file (or `ModelSpec(...)` in Python) with these fields; the `[slurm]`",
        "table holds the SLURM options. Unknown fields are refused, so a typo is an error, not",
        "a silent default. Generated from `slurm_llm.ModelSpec`, `slurm_llm.SlurmOptions` and",
        "`slurm_llm.Autoscale`.",
        "",
    ]
    tables: tuple[tuple[str, type[BaseModel]], ...] = (
        ("ModelSpec", ModelSpec),
        ("[slurm]: SlurmOptions", SlurmOptions),
        ("[autoscale]: Autoscale", Autoscale),
    )
    for title, model in tables:
        lines += [f"## {title}", "", (model.__doc__ or "").strip().split("\n\n")[0], ""]
        lines += ["| field | type | default | meaning |", "|---|---|---|---|"]
        lines += [field_row(name, model) for name in model.model_fields]
        lines.append("")
    return "\n".join(lines)


def field_row(name: str, model: type[BaseModel]) -> str:
    field = model.model_fields[name]
    kind = (
        field.annotation.__name__
        if isinstance(field.annotation, type) and not isinstance(field.annotation, type(list[int]))
        else str(field.annotation).replace("typing.", "")
    )
    if field.default is not PydanticUndefined:
        default = f"`{json.dumps(field.default, default=str)}`"
    elif field.default_factory is not None:
        default = "empty"
    else:
        default = "required"
    meaning = (field.description or "").replace("|", "\\|")
    return f"| `{name}` | `{kind}` | {default} | {meaning} |"


def commands(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """Every command and subcommand: its full name, its one-line help, its parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", helps.get(name, ""), sub
                yield from commands(sub, f"{path} {name}")


def cli_page() -> str:
    parser = build_parser()
    lines = ["# CLI", "", "Generated from the `slurm-llm` parser; `slurm-llm COMMAND --help`",
             "says the same.", "", "```", parser.format_usage().strip(), "```", ""]  # fmt: skip
    for name, summary, sub in commands(parser, "slurm-llm"):
        lines += [f"## `{name}`", ""]
        if summary or sub.description:
            lines += [summary or sub.description or "", ""]
        lines += ["```", sub.format_usage().strip(), "```", ""]
        options = [a for a in sub._actions if not isinstance(a, argparse._SubParsersAction)]
        options = [a for a in options if a.help != argparse.SUPPRESS and a.dest != "help"]
        if options:
            lines += ["| argument | default | meaning |", "|---|---|---|"]
            for action in options:
                names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
                default = action.default
                shown = "" if default in (None, argparse.SUPPRESS, False) else f"`{default}`"
                meaning = (action.help % vars(action)).replace("|", "\\|") if action.help else ""
                lines.append(f"| {names} | {shown} | {meaning} |")
            lines.append("")
    return "\n".join(lines)


def http_page() -> str:
    document = openapi_document()
    lines = ["# HTTP API", "",
             f"The router's API, version {document['info']['version']}, generated from its OpenAPI",
             "document: a running router serves the same at `/openapi.json` and as a page at",
             "`/docs` (no internet needed). Request bodies are checked against these schemas;",
             "fields not named here pass through to the engine untouched.", ""]  # fmt: skip
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            lines += [f"## `{method.upper()} {path}`", "", op.get("summary", ""), ""]
            if description := op.get("description"):
                lines += [description, ""]
            body = op.get("requestBody", {}).get("content", {})
            for content_type, media in body.items():
                ref = media.get("schema", {}).get("$ref", "")
                if ref:
                    lines.append(f"Request ({content_type}): `{ref.rsplit('/', 1)[-1]}`")
                    lines.append("")
            answers = ", ".join(f"`{code}` {r.get('description', '')}"
                                for code, r in op.get("responses", {}).items())  # fmt: skip
            lines += [f"Answers: {answers}", ""]
    lines += ["## Schemas", ""]
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        lines += [f"### `{name}`", "", (schema.get("description") or "").strip(), ""]
        properties: dict[str, Any] = schema.get("properties", {})
        if properties:
            lines += ["| field | meaning |", "|---|---|"]
            for field, spec in properties.items():
                text = (spec.get("description") or "").replace("|", "\\|").replace("\n", " ")
                lines.append(f"| `{field}` | {text} |")
            lines.append("")
    return "\n".join(lines)


def metrics_page() -> str:
    state = build_app(BackendPool(None), RouterConfig())[STATE]
    labels = {m._name: m._labelnames for m in vars(state.metrics).values()
              if isinstance(m, MetricWrapperBase)}  # fmt: skip
    lines = ["# Metrics", "",
             "A router serves Prometheus metrics at `/metrics`; these are all of them, from a",
             "router's own registry. Counters are exposed with `_total`, histograms with",
             "`_bucket`, `_sum` and `_count`.", "",
             "| metric | type | labels | meaning |", "|---|---|---|---|"]  # fmt: skip
    for family in state.metrics.registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        names = tuple(labels.get(family.name) or getattr(family, "_labelnames", None) or ())
        shown = ", ".join(f"`{label}`" for label in names)
        lines.append(f"| `{name}` | {family.type} | {shown} | {family.documentation} |")
    return "\n".join(lines) + "\n"


def environment_page() -> str:
    lines = ["# Environment variables", "",
             "Every variable slurm-llm reads, then those it sets for the engines it starts.", "",
             "| variable | read or set by | meaning |", "|---|---|---|"]  # fmt: skip
    lines += [f"| `{name}` | {who} | {meaning} |" for name, who, meaning in ENVIRONMENT]
    return "\n".join(lines) + "\n"


PAGES = {
    "reference/spec.md": spec_page,
    "reference/cli.md": cli_page,
    "reference/http-api.md": http_page,
    "reference/metrics.md": metrics_page,
    "reference/environment.md": environment_page,
}

RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"


def results_index() -> str:
    lines = ["# Benchmark results", "",
             "Every file the benchmarks in `benchmarks/` saved and the project committed:",
             "JSON with every request, the machine and the settings; CSV summaries; plots.",
             ""]  # fmt: skip
    lines += [f"- [{path.name}]({path.name})" for path in sorted(RESULTS.iterdir())]
    return "\n".join(lines) + "\n"


for page, render in {**PAGES, "results/index.md": results_index}.items():
    with mkdocs_gen_files.open(page, "w") as out:
        out.write(render())
for result in sorted(RESULTS.iterdir()):
    with mkdocs_gen_files.open(f"results/{result.name}", "wb") as copy:
        copy.write(result.read_bytes())
