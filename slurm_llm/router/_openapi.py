"""The router's published API: ``GET /openapi.json`` (OpenAPI 3.1) and ``GET /docs``.

The request schemas are the pydantic models the router checks bodies with (``_schemas``), so
the document cannot drift from what is enforced; a test checks that every route the app serves
is in it. ``/docs`` renders the same document as one HTML page, with no script or style from
elsewhere: it must work on a cluster with no internet.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import jinja2
from aiohttp import web
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from slurm_llm import __version__
from slurm_llm.router import _schemas as s
from slurm_llm.router._routes import Routes

REF = "#/components/schemas/{model}"
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "Needed when the router was started with API keys.",
}


class OpenAIErrorDetail(BaseModel):
    message: str = Field(description="What is wrong and what to do.")
    type: str = Field(description="invalid_request_error, not_found, timeout, ...")
    param: str | None = Field(None, description="The request field at fault, if one is.")
    code: int


class OpenAIError(BaseModel):
    """An error answered by the router (or passed on from an engine) in OpenAI's shape."""

    error: OpenAIErrorDetail


class TgiError(BaseModel):
    """An error in TGI's shape, which the ``text-generation`` client maps to its exceptions."""

    error: str
    error_type: str | None = None


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str
    state: Literal["ready", "waking", "scaled to zero"] = Field(
        description="ready: a replica serves it; waking: its elastic deployment is starting "
        "one; scaled to zero: none runs, and a request wakes it (and waits)."
    )
    replicas: ElasticReplicas | None = Field(
        default=None, description="For an elastic deployment: its replica counts and bounds."
    )


class ElasticReplicas(BaseModel):
    ready: int
    desired: int
    min: int
    max: int


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ModelLoadReport(BaseModel):
    model: str
    replicas: int
    routable: int
    in_flight: int
    capacity: int
    queued: int
    utilisation: float | None = Field(description="Demand over capacity; null: no capacity.")


class LoadReport(BaseModel):
    models: list[ModelLoadReport]


class FileObject(BaseModel):
    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str


class Page(BaseModel):
    object: str = "list"
    has_more: bool
    first_id: str | None
    last_id: str | None


class FileList(Page):
    data: list[FileObject]


class FileDeleted(BaseModel):
    id: str
    object: str = "file"
    deleted: bool


class BatchObject(BaseModel):
    """A batch as OpenAI's API shows it (``status``: validating, failed, in_progress,
    finalizing, completed, expired, cancelling, cancelled)."""

    id: str
    object: str = "batch"
    endpoint: str
    errors: dict[str, Any] | None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: dict[str, int] = Field(description="total, completed, failed")
    usage: dict[str, Any] = Field(description="input_tokens, output_tokens, total_tokens")
    metadata: dict[str, str] | None


class BatchList(Page):
    data: list[BatchObject]


class ReplicaView(BaseModel):
    replica: int
    job_id: str
    state: str = Field(description="pending, starting, ready, draining, failed or stopped.")
    url: str | None
    node: str | None
    reason: str | None = Field(description="SLURM's reason while pending; the error if failed.")
    log_path: str | None
    successor: str | None = Field(description="The job taking over before wall-time ends.")
    engine: str | None
    gpus: list[str]
    walltime_left_s: float | None
    ready_since: float | None
    log_tail: list[str] = Field(description="The log's last lines, for a replica not ready.")


class DeploymentView(BaseModel):
    name: str
    model: str
    engine: str
    executor: str
    replicas_wanted: int
    replicas: list[ReplicaView]
    controller: dict[str, Any] | None = Field(description="alive, text, kind; null: none.")
    scaling: dict[str, Any] | None = Field(description="An elastic deployment's counts.")
    events: list[dict[str, Any]] = Field(description="The latest: seq, time, text.")


class DeploymentList(BaseModel):
    deployments: list[DeploymentView]


class Scaled(BaseModel):
    name: str
    replicas_wanted: int


class Stopped(BaseModel):
    name: str
    stopped: bool


class LoadSeries(BaseModel):
    sample_s: float
    window_s: float = Field(description="Percentiles at a point cover this many seconds.")
    models: dict[str, dict[str, list[float | None]]] = Field(
        description="Per model, per series (t, requests_per_s, errors_per_s, tokens_per_s, "
        "in_flight, capacity, queued, latency_p50_s ... ttft_p99_s), one value per sample."
    )
    keys: dict[str, dict[str, float]] | None = Field(
        None, description="With keys=1: requests and tokens per key in the period."
    )


class VerdictList(BaseModel):
    runs: list[dict[str, Any]] = Field(description="Tribunal runs, newest first.")
    total: int
    damaged_lines: int
    filters: dict[str, list[str]] = Field(description="The values each filter can take.")


class Status(BaseModel):
    status: str
    models: list[str] | None = None


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    request: type[BaseModel] | None = None
    answer: type[BaseModel] | str = "A JSON object (the engine's answer, passed on as is)."
    streams: bool = False  # may answer text/event-stream
    upload: bool = False  # takes multipart/form-data
    errors: type[BaseModel] = OpenAIError
    statuses: tuple[int, ...] = (400, 401, 403, 404, 429, 500, 503, 504)
    query: tuple[tuple[str, str], ...] = ()  # (name, description) of optional parameters


def tgi_operations(prefix: str) -> list[Operation]:
    where = " of the model in the path" if prefix else " of the only model served"
    return [
        Operation("post", prefix or "/", f"TGI generate{where} (a list, as TGI's / answers)",
                  "TGI", s.GenerateRequest, errors=TgiError, streams=True),
        Operation("post", f"{prefix}/generate", f"TGI generate{where}", "TGI",
                  s.GenerateRequest, errors=TgiError),
        Operation("post", f"{prefix}/generate_stream", f"TGI streamed generate{where}",
                  "TGI", s.GenerateRequest, errors=TgiError, streams=True),
    ]  # fmt: skip


OPERATIONS: list[Operation] = [
    Operation("post", "/v1/chat/completions", "Chat completion, streamed or not; with "
              "'tribunal', answered after critique and revision", "OpenAI",
              s.ChatCompletionRequest, streams=True),
    Operation("post", "/v1/completions", "Text completion, streamed or not", "OpenAI",
              s.CompletionRequest, streams=True),
    Operation("get", "/v1/models", "The models served now", "OpenAI", answer=ModelList,
              statuses=()),
    *tgi_operations(""),
    *tgi_operations("/models/{model}"),
    Operation("post", "/v1/batch", "Many completions in one call, answered in order; a failed "
              "item is reported in its place", "Workflows", s.BatchRequest, statuses=(400, 413)),
    Operation("post", "/v1/tribunal", "Generate, critique against laws, revise", "Workflows",
              s.TribunalRequest),
    Operation("post", "/v1/map_reduce", "A text longer than the context: chunks answered, "
              "then combined", "Workflows", s.MapReduceRequest),
    Operation("post", "/v1/files", "Upload a batch's input (multipart: 'file', 'purpose' "
              "batch); streamed to the shared filesystem", "Batches", answer=FileObject,
              upload=True, statuses=(400, 401, 413)),
    Operation("get", "/v1/files", "The caller's files, newest first", "Batches",
              answer=FileList, statuses=(400, 401)),
    Operation("get", "/v1/files/{file_id}", "One of the caller's files", "Batches",
              answer=FileObject, statuses=(401, 404)),
    Operation("delete", "/v1/files/{file_id}", "Delete one of the caller's files", "Batches",
              answer=FileDeleted, statuses=(401, 404, 409)),
    Operation("get", "/v1/files/{file_id}/content", "A file's content (a batch's output or "
              "errors: JSON lines)", "Batches", answer="The file's bytes.", statuses=(401, 404)),
    Operation("post", "/v1/batches", "Run every line of an uploaded file; resumed after any "
              "router's crash", "Batches", s.BatchCreateRequest, answer=BatchObject,
              statuses=(400, 401, 404)),
    Operation("get", "/v1/batches", "The caller's batches, newest first", "Batches",
              answer=BatchList, statuses=(400, 401)),
    Operation("get", "/v1/batches/{batch_id}", "One of the caller's batches, with its counts",
              "Batches", answer=BatchObject, statuses=(401, 404)),
    Operation("post", "/v1/batches/{batch_id}/cancel", "Stop sending its lines; it ends "
              "cancelled with what was answered", "Batches", answer=BatchObject,
              statuses=(401, 404, 409)),
    Operation("get", "/v1/load", "In-flight requests, capacity and queue per model",
              "Operations", answer=LoadReport, statuses=()),
    Operation("get", "/v1/deployments", "Every deployment behind this router: replicas with "
              "their jobs, nodes, GPUs, wall-time left and errors, controller, events",
              "Operations", answer=DeploymentList, statuses=(401,)),
    Operation("post", "/v1/deployments/{name}/scale", "Scale a deployment (an operator's key)",
              "Operations", s.ScaleRequest, answer=Scaled, statuses=(400, 401, 403, 404, 409)),
    Operation("delete", "/v1/deployments/{name}", "Stop a deployment: cancel its jobs and "
              "forget it (an operator's key)", "Operations", answer=Stopped,
              statuses=(401, 403, 404)),
    Operation("get", "/v1/stats", "Traffic over the last minutes per model, from the "
              "router's metrics: rates, load and latency percentiles", "Operations",
              answer=LoadSeries, statuses=(400, 401, 403),
              query=(("minutes", "1 to 10 (default 5)"),
                     ("keys", "1: usage per key too (an operator's key)"))),
    Operation("get", "/v1/verdicts", "The tribunal's verdict log, newest first (an "
              "operator's key)", "Operations", answer=VerdictList, statuses=(400, 401, 403),
              query=(("limit", "runs, 1 to 500 (default 50)"),
                     ("outcome", "accepted, rejected or not judged"),
                     ("laws", "a law book, as name@version"),
                     ("mode", "full, reduced or base-only"))),
    Operation("get", "/ui", "The web console (redirects to /ui/)", "Operations",
              answer="An HTML page.", statuses=()),
    Operation("get", "/ui/{asset}", "The web console's page, script and style", "Operations",
              answer="The file.", statuses=(404,)),
    Operation("get", "/health", "200 while the router runs", "Operations", answer=Status,
              statuses=()),
    Operation("get", "/ready", "200 once a replica is routable or a model can be woken; 503 "
              "before", "Operations",
              answer=Status, statuses=(503,)),
    Operation("get", "/metrics", "Prometheus metrics", "Operations",
              answer="Prometheus text exposition format.", statuses=()),
    Operation("get", "/openapi.json", "This document", "Operations",
              answer="The OpenAPI 3.1 document.", statuses=()),
    Operation("get", "/docs", "This document as an HTML page", "Operations",
              answer="An HTML page.", statuses=()),
]  # fmt: skip


@cache
def openapi_document() -> dict[str, Any]:
    models: set[type[BaseModel]] = {OpenAIError, TgiError}
    models |= {op.request for op in OPERATIONS if op.request}
    models |= {op.answer for op in OPERATIONS if isinstance(op.answer, type)}
    refs, schemas = models_json_schema(
        [(model, "validation") for model in sorted(models, key=lambda m: m.__name__)],
        ref_template=REF,
    )
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "slurm-llm router",
            "version": __version__,
            "description": "One endpoint in front of every model served on the cluster: the "
            "OpenAI and TGI APIs, plus batch, tribunal and map-reduce. Bodies are checked "
            "against these schemas; unknown fields of the OpenAI and TGI bodies pass through "
            "to the engine.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": BEARER},
        },
        "security": [{"bearer": []}, {}],
    }


def operation(op: Operation, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return refs[(model, "validation")]

    answer: dict[str, Any] = {"description": "OK"}
    if isinstance(op.answer, type):
        answer["content"] = {"application/json": {"schema": ref(op.answer)}}
    else:
        answer["description"] = op.answer
        kind = {"/metrics": "text/plain", "/docs": "text/html", "/ui": "text/html",
                "/ui/{asset}": "application/octet-stream",
                "/v1/files/{file_id}/content": "application/octet-stream"}.get(
            op.path, "application/json")  # fmt: skip
        answer["content"] = {kind: {"schema": {"type": "string" if kind != "application/json"
                                                else "object"}}}  # fmt: skip
    if op.streams:
        answer["content"]["text/event-stream"] = {
            "schema": {"type": "string", "description": "Server-sent events, when streamed."}
        }
    responses: dict[str, Any] = {"200": answer}
    for status in op.statuses:
        responses[str(status)] = {
            "description": STATUS_TEXT[status],
            "content": {"application/json": {"schema": ref(op.errors)}},
        }
    found: dict[str, Any] = {
        "summary": op.summary,
        "tags": [op.tag],
        "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_') or 'root'}".replace(
            "{", ""
        ).replace("}", ""),
        "responses": responses,
    }
    if op.request is not None:
        found["description"] = (op.request.__doc__ or "").strip()
        found["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(op.request)}},
        }
    if op.upload:
        found["requestBody"] = {"required": True, "content": {"multipart/form-data": {
            "schema": {"type": "object", "required": ["file", "purpose"], "properties": {
                "file": {"type": "string", "format": "binary"},
                "purpose": {"type": "string", "enum": ["batch"]},
            }},
        }}}  # fmt: skip
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in re.findall(r"{(\w+)}", op.path)]  # fmt: skip
    parameters += [{"name": name, "in": "query", "required": False, "description": text,
                    "schema": {"type": "string"}} for name, text in op.query]  # fmt: skip
    if parameters:
        found["parameters"] = parameters
    return found


STATUS_TEXT = {
    400: "The body does not fit the schema; the error names the field.",
    401: "This router needs an API key, and none or a wrong one was sent.",
    403: "The key may not use this model (the error names the models it may use), or the "
    "operation needs an operator's key.",
    404: "The model (or the file or batch) is not here; the error lists the models served.",
    409: "The batch is already over, or the file is the input of a batch still running.",
    413: "The body or the batch is too large.",
    429: "The key is over a rate limit or quota, or the model's queue is full; retry after "
    "the Retry-After seconds (x-ratelimit-* headers say what is left).",
    500: "The engines refused this request again (X-Should-Retry: false; the status is the "
    "engine's): send it changed.",
    503: "No replica could answer; retry after the Retry-After seconds.",
    504: "The request's deadline passed.",
}


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=docs_page(), content_type="text/html")


@cache
def docs_page() -> str:
    document = openapi_document()
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("slurm_llm.router", "templates"), autoescape=True
    )
    environment.filters["pretty"] = lambda value: json.dumps(value, indent=2)
    environment.filters["schema_name"] = lambda ref: ref.rsplit("/", 1)[-1]
    return environment.get_template("docs.html.j2").render(
        document=document, schemas=document["components"]["schemas"]
    )


def add_routes(routes: Routes) -> None:
    routes.get("/openapi.json", openapi_json)
    routes.get("/docs", docs)
