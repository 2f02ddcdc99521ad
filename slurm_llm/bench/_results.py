"""What a benchmark run records, and its files: JSON for machines, CSV for spreadsheets.

Each run keeps every request it sent (successes, errors and rejections alike), so a summary can
be checked against, or recomputed from, the raw records; and the machine, engine, model and
front end it measured, since numbers without them mean little.
"""

from __future__ import annotations

import csv
import secrets
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slurm_llm._errors import SlurmLLMError

SCHEMA_VERSION = 1

FrontEnd = Literal["direct", "router", "nginx", "url"]


class RequestRecord(BaseModel):
    """One request's life, in seconds from the start of its level."""

    model_config = ConfigDict(frozen=True)

    start_s: float
    ttft_s: float | None = None
    e2e_s: float | None = None
    # Gaps between streamed content events; an engine that sends several tokens in one event
    # gives one gap for them, which is why per-token latency (TPOT) is reported as well.
    itl_s: list[float] = Field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    error: str | None = None
    rejected: bool = False  # 429 or 503: the server said "not now", rather than failing

    @property
    def ok(self) -> bool:
        return self.error is None and self.e2e_s is not None

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first: the decode speed one user sees."""
        if not self.ok or self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


class Percentiles(BaseModel):
    model_config = ConfigDict(frozen=True)

    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None


class LatencyTargets(BaseModel):
    """Service-level objectives a request must meet to count towards goodput."""

    model_config = ConfigDict(frozen=True)

    ttft_s: float = Field(default=2.0, gt=0)
    tpot_s: float = Field(default=0.1, gt=0)


class LevelResult(BaseModel):
    """One load level: a number of concurrent users, or a Poisson request rate."""

    concurrency: int | None = None
    rate: float | None = None
    requests: int
    completed: int
    errors: int
    rejected: int
    wall_s: float
    request_throughput: float  # completed requests per second
    output_token_throughput: float  # generated tokens per second, all users together
    total_token_throughput: float  # prompt and generated tokens per second
    goodput: float  # completed requests per second that met the latency targets
    slo_attainment: float  # share of all sent requests that met the latency targets
    mean_prompt_tokens: float | None
    mean_output_tokens: float | None
    ttft: Percentiles
    itl: Percentiles
    tpot: Percentiles
    e2e: Percentiles
    records: list[RequestRecord] = Field(default_factory=list, repr=False)

    @property
    def load(self) -> float:
        """The x of this level in every table and plot."""
        value = self.concurrency if self.concurrency is not None else self.rate
        assert value is not None, "a level has a concurrency or a rate"
        return float(value)


class Saturation(BaseModel):
    """A run's saturation point and how it was found (the rule is in ``_saturation``)."""

    model_config = ConfigDict(frozen=True)

    load: float | None
    rule: str
    reason: str


class TargetInfo(BaseModel):
    """What was measured: the front end, the servers behind it, and the engine and model."""

    front_end: FrontEnd
    urls: list[str]
    model: str
    engine: str = "unknown"
    engine_version: str | None = None  # as the server reports it, where it does
    replicas: int | None = None
    deployment: str | None = None


class SweepSettings(BaseModel):
    """How the load was made; with the seed, a run can be repeated request for request."""

    model_config = ConfigDict(frozen=True)

    workload: str
    mode: Literal["concurrency", "rate"]
    levels: list[float]
    requests_per_level: int | None = None  # fixed count; None: rounds x concurrency
    rounds: int = 4
    min_requests: int = 16
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    ignore_eos: bool = True
    seed: int = 0
    # Starts every prompt: the seed fixes the texts, and this keeps an engine's prefix cache,
    # warm from an earlier run with the same seed, from answering them cheaper than new ones.
    nonce: str = Field(default_factory=lambda: secrets.token_hex(4))
    timeout_s: float = 600.0
    targets: LatencyTargets = LatencyTargets()
    stop_error_rate: float = Field(default=0.5, ge=0, le=1)


class BenchRun(BaseModel):
    schema_version: int = SCHEMA_VERSION
    label: str
    created: str = Field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    machine: dict[str, Any]
    target: TargetInfo
    settings: SweepSettings
    levels: list[LevelResult]
    saturation: Saturation
    slo_capacity: Saturation
    notes: list[str] = Field(default_factory=list)

    @property
    def peak_throughput(self) -> float:
        """The highest output-token throughput of any level (tokens per second)."""
        return max((level.output_token_throughput for level in self.levels), default=0.0)


CSV_COLUMNS = (
    "label", "front_end", "engine", "model", "replicas", "workload", "concurrency", "rate",
    "requests", "completed", "errors", "rejected", "wall_s", "request_throughput",
    "output_token_throughput", "total_token_throughput", "goodput", "slo_attainment",
    "mean_prompt_tokens", "mean_output_tokens",
)  # fmt: skip
_DISTRIBUTIONS = ("ttft", "itl", "tpot", "e2e")
_STATS = ("mean", "p50", "p90", "p99")


def csv_rows(run: BenchRun) -> list[dict[str, Any]]:
    """One row per level; latencies in seconds, as ``ttft_p50_s`` and so on."""
    rows = []
    for level in run.levels:
        row: dict[str, Any] = {
            "label": run.label,
            "front_end": run.target.front_end,
            "engine": run.target.engine,
            "model": run.target.model,
            "replicas": run.target.replicas,
            "workload": run.settings.workload,
        }
        row.update(level.model_dump(include=set(CSV_COLUMNS)))
        for name in _DISTRIBUTIONS:
            distribution: Percentiles = getattr(level, name)
            for stat in _STATS:
                row[f"{name}_{stat}_s"] = getattr(distribution, stat)
        rows.append(row)
    return rows


def save_run(run: BenchRun, directory: Path, stem: str | None = None) -> Path:
    """Writes ``STEM.json`` (everything, requests included) and ``STEM.csv`` (one row per
    level) into ``directory``; returns the JSON path."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{run.label}-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path = directory / f"{stem}.json"
    json_path.write_text(run.model_dump_json(indent=1))
    rows = csv_rows(run)
    columns = list(CSV_COLUMNS) + [f"{n}_{s}_s" for n in _DISTRIBUTIONS for s in _STATS]
    with json_path.with_suffix(".csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return json_path


def load_run(path: Path) -> BenchRun:
    try:
        return BenchRun.model_validate_json(Path(path).read_text())
    except FileNotFoundError:
        raise SlurmLLMError(f"{path}: no such file; `slurm-llm bench run` writes one") from None
    except ValidationError as error:
        raise SlurmLLMError(
            f"{path} is not a slurm-llm bench result (JSON written by `slurm-llm bench run`): "
            f"{error.errors()[0]['msg']} at {'.'.join(map(str, error.errors()[0]['loc']))}"
        ) from None
