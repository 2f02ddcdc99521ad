"""Batches from a shell or a script: a JSON-lines file in, its answers out, through any router
(``submit``, ``wait``, ``download``), or self-contained (``run_file``: deploys the replicas,
runs a router in this process, runs the batch, writes the answers next to the input and stops
everything), also as one SLURM job of its own (``submit_run_file``).

A thin client: the router does the work (``_batches_api``), and this only speaks the OpenAI
Batch API to it with the official client, as any user's script could.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import openai
from openai.types import Batch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from slurm_llm._errors import SlurmLLMError
from slurm_llm._paths import home_dir
from slurm_llm.batches._batch_store import ENDED
from slurm_llm.control._deployment import deploy
from slurm_llm.jobs._executors import (
    local_job_parameters,
    make_executor,
    resolve_kind,
    sbatch_parameters,
)
from slurm_llm.router._config import RouterConfig
from slurm_llm.router._server import RouterThread
from slurm_llm.spec._model_spec import ModelSpec, time_limit_min


def endpoint_of(path: Path) -> str:
    """The ``url`` of the file's first line: every line of a batch has the same."""
    with path.open("rb") as lines:
        for raw in lines:
            if raw.strip():
                try:
                    return str(json.loads(raw)["url"])
                except (ValueError, KeyError, TypeError):
                    break
    raise SlurmLLMError(
        f"{path}: its first line is not a request with a 'url' (each line is "
        '{"custom_id": ..., "method": "POST", "url": "/v1/chat/completions", "body": {...}})'
    )


def submit(client: openai.OpenAI, path: Path, metadata: dict[str, str] | None = None) -> Batch:
    """Uploads ``path`` and starts a batch of it; the router checks every line first."""
    with path.open("rb") as content:
        source = client.files.create(file=(path.name, content), purpose="batch")
    return client.batches.create(
        input_file_id=source.id,
        endpoint=endpoint_of(path),  # type: ignore[arg-type]
        completion_window="24h",
        metadata=metadata,
    )


def wait(
    client: openai.OpenAI, batch_id: str, progress: bool = True, every_s: float = 1.0
) -> Batch:
    """The batch once it has ended, with a progress bar (lines done, tokens/s, time left)."""
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(),
        TextColumn("{task.completed}/{task.total} lines"), TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(), disable=not progress,
    ) as bar:  # fmt: skip
        task = bar.add_task(batch_id, total=None, rate="")
        last_tokens, last_time = 0, time.monotonic()
        while True:
            batch = client.batches.retrieve(batch_id)
            counts, usage = batch.request_counts, batch.usage
            done = counts.completed + counts.failed if counts else 0
            tokens = usage.total_tokens if usage else 0
            now = time.monotonic()
            rate = (tokens - last_tokens) / max(now - last_time, 1e-9)
            last_tokens, last_time = tokens, now
            total = counts.total if counts and counts.total else None
            bar.update(task, completed=done, total=total, description=f"{batch_id} {batch.status}",
                       rate=f"{rate:,.0f} tokens/s")  # fmt: skip
            if batch.status in ENDED:
                return batch
            time.sleep(every_s)


def download(client: openai.OpenAI, batch: Batch, input_path: Path) -> list[Path]:
    """The answers and the failed lines, next to the input: ``NAME.output.jsonl`` and
    ``NAME.errors.jsonl``; the paths written."""
    written = []
    for file_id, kind in ((batch.output_file_id, "output"), (batch.error_file_id, "errors")):
        if file_id is not None:
            target = input_path.with_name(f"{input_path.stem}.{kind}.jsonl")
            client.files.content(file_id).write_to_file(target)
            written.append(target)
    return written


@dataclass(frozen=True)
class BatchFileRun:
    """What ``run_file`` did: the batch as it ended and the files it wrote."""

    batch: Batch
    written: list[Path]


def run_file(
    path: Path,
    spec: ModelSpec,
    replicas: int = 1,
    *,
    executor: str = "auto",
    home: Path | None = None,
    progress: bool = True,
) -> BatchFileRun:
    """Deploys ``replicas`` of ``spec``, runs every line of ``path`` through a router in this
    process, writes the answers next to it, and stops everything, whatever happens."""
    path = Path(path).resolve()
    name = f"batch-{path.stem}"[:40].replace("_", "-").replace(".", "-")
    with (
        deploy(
            spec, replicas=replicas, executor=executor, name=name, home=home, progress=progress
        ) as deployment,  # fmt: skip
        RouterThread(home=home, deployment=deployment.name, config=RouterConfig()) as router,
        openai.OpenAI(base_url=f"{router.url}/v1", api_key="none") as client,
    ):
        # OpenAI's limit on a metadata value is 512 characters: the path's end says the most.
        batch = wait(client, submit(client, path, {"input": str(path)[-512:]}).id, progress)
        return BatchFileRun(batch, download(client, batch, path))


@dataclass(frozen=True)
class BatchFileJob:
    """``run_file`` as the body of one job, the replicas running inside its allocation."""

    path: str
    spec: ModelSpec
    replicas: int
    home: str

    def __call__(self) -> list[str]:
        done = run_file(Path(self.path), self.spec, self.replicas, executor="local",
                        home=Path(self.home), progress=False)  # fmt: skip
        if done.batch.status != "completed":
            raise SlurmLLMError(f"the batch ended {done.batch.status}: {done.batch.errors}")
        return [str(p) for p in done.written]


def submit_run_file(
    path: Path, spec: ModelSpec, replicas: int = 1, *, executor: str = "auto",
    home: Path | None = None,
) -> object:  # fmt: skip
    """``run_file`` as one job holding every replica's resources (SLURM when available);
    returns the submitit job (``.job_id``, ``.result()``)."""
    kind = resolve_kind(executor)
    root = home_dir(home)
    folder = root / "batches" / "jobs" / f"{Path(path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    submitter = make_executor(kind, folder)
    time_min = time_limit_min(spec)
    if kind == "slurm":
        submitter.update_parameters(**sbatch_parameters(
            spec.slurm, f"slurm-llm-batch-{Path(path).stem}", time_min=time_min,
            cpus=spec.cpus * replicas + 1, mem_gb=spec.memory_gb * replicas + 2,
            gpus=spec.gpus * replicas if spec.device != "cpu" else 0,
        ))  # fmt: skip
    else:
        submitter.update_parameters(**local_job_parameters(time_min))
    return submitter.submit(BatchFileJob(str(Path(path).resolve()), spec, replicas, str(root)))
