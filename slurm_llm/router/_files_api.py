"""OpenAI's Files API: ``/v1/files`` (upload, list, show, delete) and ``/v1/files/{id}/content``.

Uploads are streamed to the shared filesystem (``batches._file_store``), never held whole in
memory, up to ``RouterConfig.max_file_bytes``. Each key sees and touches only its own files;
another key's file is answered as not found, so ids cannot be probed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar, get_args

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from slurm_llm._usage import ANONYMOUS
from slurm_llm.batches._file_store import FileRecord, FileTooLarge, Purpose
from slurm_llm.router._errors import RouterError
from slurm_llm.router._metering import CALLER
from slurm_llm.router._routes import Routes
from slurm_llm.router._state import STATE

UPLOAD_PURPOSES = ("batch",)  # what clients upload; batch_output files are the router's own


def owner_of(request: web.Request) -> str:
    """Who owns what this request makes: its key's hash, not its name (a flat list's keys are
    named by their position, which another key takes when one is removed)."""
    caller = request.get(CALLER)
    return caller.hash if caller is not None else ANONYMOUS


class Owned(Protocol):
    owner: str


R = TypeVar("R", bound=Owned)


def owned(request: web.Request, record: R | None, noun: str, given: str, param: str) -> R:
    """``record`` if the caller owns it; else a 404, the same as for an id that does not
    exist, so one key cannot probe for another's ids."""
    if record is None or record.owner != owner_of(request):
        raise RouterError(404, f"no {noun} {given!r}", "not_found", param=param)
    return record


async def own_file(request: web.Request) -> FileRecord:
    file_id = request.match_info["file_id"]
    record = await asyncio.to_thread(request.app[STATE].files.get, file_id)
    return owned(request, record, "file", file_id, "file_id")


async def upload(request: web.Request) -> web.Response:
    if not request.content_type.startswith("multipart/form-data"):
        raise RouterError(400, "upload a file as multipart/form-data with the fields 'file' "
                          "and 'purpose' (the openai client's files.create does)")  # fmt: skip
    try:
        purpose, record = await receive_upload(request)
    # Its headers, boundary, charset or transfer encoding (aiohttp raises LookupError for an
    # unknown charset, RuntimeError for an unknown encoding).
    except (HttpProcessingError, ValueError, LookupError, RuntimeError) as exc:
        raise RouterError(400, f"the multipart body is malformed: {exc}") from None
    state = request.app[STATE]
    if purpose not in UPLOAD_PURPOSES or record is None:
        if record is not None:
            state.files.delete(record.id)
        if record is None:
            raise RouterError(400, "the upload has no 'file' field", param="file")
        raise RouterError(
            400, f"'purpose' must be one of {', '.join(UPLOAD_PURPOSES)}, not {purpose!r}",
            param="purpose",
        )  # fmt: skip
    return web.json_response(record.public())


async def receive_upload(request: web.Request) -> tuple[str | None, FileRecord | None]:
    """The upload's purpose and its file, stored as it arrives."""
    state = request.app[STATE]
    purpose: str | None = None
    record: FileRecord | None = None
    try:
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                raise RouterError(400, "nested multipart bodies are not taken")
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file" and record is None:
                try:
                    record = await state.files.receive(
                        chunks(part), part.filename or "upload.jsonl", "batch", owner_of(request),
                        state.config.max_file_bytes,
                    )  # fmt: skip
                except FileTooLarge as exc:
                    raise RouterError(413, str(exc)) from None
            else:
                await part.release()
    except BaseException:  # a later part was broken, or the client went: no file is left
        if record is not None:
            state.files.delete(record.id)
        raise
    return purpose, record


async def chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(2**16):
        yield chunk


async def list_files(request: web.Request) -> web.Response:
    purpose = request.query.get("purpose")
    if purpose is not None and purpose not in get_args(Purpose):
        raise RouterError(400, f"unknown purpose {purpose!r}", param="purpose")
    owner = owner_of(request)
    files = await asyncio.to_thread(lambda: [
        r.public() for r in request.app[STATE].files.records()
        if r.owner == owner and (purpose is None or r.purpose == purpose)
    ])  # fmt: skip
    if request.query.get("order") == "asc":
        files.reverse()
    return web.json_response(page(files, request))


def page(
    items: list[dict[str, Any]], request: web.Request, default_limit: int = 10_000
) -> dict[str, Any]:
    """OpenAI's cursor pages: ``limit`` items after the id ``after``."""
    try:
        limit = int(request.query.get("limit", default_limit))
    except ValueError:
        raise RouterError(400, "'limit' must be a whole number", param="limit") from None
    if not 1 <= limit <= 10_000:
        raise RouterError(400, "'limit' must be between 1 and 10000", param="limit")
    if after := request.query.get("after"):
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    shown = items[:limit]
    return {
        "object": "list", "data": shown, "has_more": len(items) > limit,
        "first_id": shown[0]["id"] if shown else None,
        "last_id": shown[-1]["id"] if shown else None,
    }  # fmt: skip


async def show_file(request: web.Request) -> web.Response:
    return web.json_response((await own_file(request)).public())


async def delete_file(request: web.Request) -> web.Response:
    record = await own_file(request)
    state = request.app[STATE]
    batches = await asyncio.to_thread(lambda: list(state.batches.records()))
    if any(b.input_file_id == record.id and not b.finished for b in batches):
        raise RouterError(409, f"file {record.id!r} is the input of a batch still running; "
                          "cancel the batch first", "conflict")  # fmt: skip
    await asyncio.to_thread(state.files.delete, record.id)
    return web.json_response({"id": record.id, "object": "file", "deleted": True})


async def file_content(request: web.Request) -> web.StreamResponse:
    record = await own_file(request)
    path = request.app[STATE].files.content_path(record.id)
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


def add_routes(routes: Routes) -> None:
    routes.post("/v1/files", upload)
    routes.get("/v1/files", list_files)
    routes.get("/v1/files/{file_id}", show_file)
    routes.delete("/v1/files/{file_id}", delete_file)
    routes.get("/v1/files/{file_id}/content", file_content)
