"""OpenAI's Batch API: ``/v1/batches`` (create, list, show, cancel), run by the routers that
share the site's storage, resumed by whichever comes first after one dies.

Creating a batch writes its record and starts it here. Every router also looks for unfinished
batches whose lock is free (``BATCH_SCAN_S``): a batch whose router was killed, requeued or
reached its wall-time is taken over and resumed (``batches._runner``). Its lines go in as
``batch``-class requests of the key that created it, through the same admission, limits and
usage records as that key's own requests, keeping every replica's slots full with some more
waiting in the queue (``LINES_PER_SLOT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from slurm_llm._files import try_lock
from slurm_llm._usage import ANONYMOUS
from slurm_llm.batches._batch_store import BatchRecord
from slurm_llm.batches._input import BodyCheck, InputLine
from slurm_llm.batches._runner import BatchRun
from slurm_llm.router._batch import send_metered
from slurm_llm.router._errors import RouterError
from slurm_llm.router._files_api import owned, owner_of, page
from slurm_llm.router._metering import CALLER, check_access
from slurm_llm.router._requests import read_json, require_served, validated
from slurm_llm.router._routes import Routes
from slurm_llm.router._schemas import ENDPOINT_MODELS, BatchCreateRequest
from slurm_llm.router._state import STATE, RouterState

log = logging.getLogger("slurm_llm.router")
BATCH_SCAN_S = 2.0
LINES_PER_SLOT = 2  # lines in flight per replica slot: the next is queued when one ends
RETRY_UNAVAILABLE_S = 2.0  # a line finding no replica (being replaced) tries again after this


class BatchRuns:
    """The batches this router runs, one task each, holding each batch's lock."""

    def __init__(self, state: RouterState) -> None:
        self.state = state
        self.running: dict[str, asyncio.Task[None]] = {}
        self.finished: set[str] = set()  # never read again

    def start(self, batch_id: str) -> None:
        """Runs the batch here unless it runs here or elsewhere already, or is over."""
        if batch_id in self.running or batch_id in self.finished:
            return
        lock = try_lock(self.state.batches.lock_path(batch_id))
        if lock is None:
            return  # another router runs it
        record = self.state.batches.get(batch_id)
        if record is None or record.finished or not self.can_run(record):
            os.close(lock)
            if record is None or record.finished:
                self.finished.add(batch_id)
            return
        self.running[batch_id] = asyncio.create_task(self._run(record, lock))

    def can_run(self, record: BatchRecord) -> bool:
        """Whether this router can send the batch's lines: it knows the batch's key (or, like
        the batch's, needs none) and serves its models. Another router sharing the storage
        but serving other models, or other keys, leaves it to one that can, rather than
        writing every line off as an error."""
        callers = self.state.callers
        if callers.required and callers.holder(record.owner) is None:
            return False
        if not callers.required and record.owner != ANONYMOUS:
            return False
        return set(record.models) <= self.state.pool.known_models()

    async def _run(self, record: BatchRecord, lock: int) -> None:
        state = self.state
        try:
            run = BatchRun(
                record, state.batches, state.files,
                send=lambda line: send_line(state, record, line),
                check_body=line_checker(state, record), limit_for=self._limit_for,
            )  # fmt: skip
            if record.status != "validating":
                log.warning("resuming batch %s (%s)", record.id, record.status)
            done = await run.run()
            log.info("batch %s %s: %s", done.id, done.status, done.request_counts)
            self.finished.add(record.id)
        except asyncio.CancelledError:
            raise
        except Exception:  # left unfinished: another router, or this one restarted, retries
            log.exception("batch %s stopped on an error", record.id)
            self.finished.add(record.id)
        finally:
            os.close(lock)
            self.running.pop(record.id, None)

    def _limit_for(self, model: str) -> int:
        return LINES_PER_SLOT * self.state.admission.load(model).capacity

    async def watch(self) -> None:
        while True:
            skip = frozenset(self.finished | set(self.running))
            unfinished, finished = await asyncio.to_thread(self._scan, skip)
            self.finished |= finished  # updated here, on the loop: the scan only reads
            for batch_id in unfinished:
                self.start(batch_id)
            await asyncio.sleep(BATCH_SCAN_S)

    def _scan(self, skip: frozenset[str]) -> tuple[list[str], set[str]]:
        """Batches not over and batches over, of those not in ``skip`` (off the event loop)."""
        store = self.state.batches
        unfinished: list[str] = []
        finished: set[str] = set()
        for folder in store.folder.glob("batch_*") if store.folder.is_dir() else ():
            if folder.name in skip or (record := store.get(folder.name)) is None:
                continue
            if record.finished:
                finished.add(record.id)
            else:
                unfinished.append(record.id)
        return unfinished, finished

    async def stop(self) -> None:
        """At shutdown: each batch keeps what it answered and resumes at the next start."""
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def line_checker(state: RouterState, record: BatchRecord) -> BodyCheck:
    """A line's body checked as a request to ``endpoint`` would be, against the models served
    when the batch starts (a snapshot: the check runs off the event loop)."""
    known = state.pool.known_models()
    owner = state.callers.holder(record.owner)  # None on a router without keys

    def problem(endpoint: str, body: dict[str, Any]) -> str | None:
        try:
            validated(ENDPOINT_MODELS[endpoint], body)
        except RouterError as exc:
            return exc.message
        model = body["model"]
        if model not in known:
            return f"model {model!r} is not served here; available: {', '.join(sorted(known))}"
        if owner is not None and not owner.may_use(model):
            return f"key {owner.name!r} may not use model {model!r}"
        return None

    return problem


async def send_line(state: RouterState, record: BatchRecord, line: InputLine) -> tuple[int, Any]:
    """One line's answer (status, JSON body), as a batch request of the batch's key. A line
    that finds no replica (they are being replaced) waits and tries again, up to the router's
    request deadline: a durable batch outlasts a replica's restart."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + state.config.deadline_s
    while True:
        try:
            caller = None
            if state.callers.required and (caller := state.callers.holder(record.owner)) is None:
                raise RouterError(401, f"the batch's key {record.key!r} was revoked",
                                  "authentication_error")  # fmt: skip
            model = require_served(state.pool, line.body.get("model"))
            check_access(caller, model)
            reply = await send_metered(state, caller, "batch", model, record.endpoint, line.body)
        except RouterError as exc:
            if exc.status == 503 and loop.time() + RETRY_UNAVAILABLE_S < deadline:
                await asyncio.sleep(RETRY_UNAVAILABLE_S)
                continue
            error = {"message": exc.message, "type": exc.kind, "param": exc.param}
            return exc.status, {"error": {**error, "code": exc.status}}
        try:
            return reply.status, json.loads(reply.body)
        except json.JSONDecodeError:
            return reply.status, {"error": {"message": reply.body.decode(errors="replace")}}


def shown(state: RouterState, record: BatchRecord) -> dict[str, Any]:
    """The record as clients see it: a cancel asked for shows at once, before the router
    running the batch has seen it."""
    public = record.public()
    unfinished = not record.finished and record.status != "cancelling"
    if unfinished and state.batches.cancel_requested(record.id):
        public["status"] = "cancelling"
    return public


async def own_batch(request: web.Request) -> BatchRecord:
    batch_id = request.match_info["batch_id"]
    record = await asyncio.to_thread(request.app[STATE].batches.get, batch_id)
    return owned(request, record, "batch", batch_id, "batch_id")


async def create_batch(request: web.Request) -> web.Response:
    _, raw_body = await read_json(request)
    body = validated(BatchCreateRequest, raw_body)
    state = request.app[STATE]
    owner = owner_of(request)
    found = await asyncio.to_thread(state.files.get, body.input_file_id)
    source = owned(request, found, "file", body.input_file_id, "input_file_id")
    if source.purpose != "batch":
        raise RouterError(400, f"file {source.id!r} was not uploaded with purpose 'batch'",
                          param="input_file_id")  # fmt: skip
    caller = request.get(CALLER)
    record = await asyncio.to_thread(
        state.batches.create, body.endpoint, source.id, body.completion_window, owner,
        caller.name if caller is not None else ANONYMOUS, body.metadata,
    )  # fmt: skip
    request.app[BATCH_RUNS].start(record.id)
    return web.json_response(record.public())


async def list_batches(request: web.Request) -> web.Response:
    state = request.app[STATE]
    owner = owner_of(request)
    batches = await asyncio.to_thread(
        lambda: [shown(state, r) for r in state.batches.records() if r.owner == owner]
    )
    return web.json_response(page(batches, request, default_limit=20))


async def show_batch(request: web.Request) -> web.Response:
    record = await own_batch(request)
    return web.json_response(await asyncio.to_thread(shown, request.app[STATE], record))


async def cancel_batch(request: web.Request) -> web.Response:
    record = await own_batch(request)
    state = request.app[STATE]
    if record.finished:
        raise RouterError(409, f"batch {record.id!r} is already {record.status}", "conflict")
    await asyncio.to_thread(state.batches.request_cancel, record.id)
    return web.json_response(await asyncio.to_thread(shown, state, record))


BATCH_RUNS: web.AppKey[BatchRuns] = web.AppKey("batch_runs", BatchRuns)


def add_routes(routes: Routes) -> None:
    routes.post("/v1/batches", create_batch)
    routes.get("/v1/batches", list_batches)
    routes.get("/v1/batches/{batch_id}", show_batch)
    routes.post("/v1/batches/{batch_id}/cancel", cancel_batch)


async def batch_runs(app: web.Application) -> AsyncIterator[None]:
    """A ``cleanup_ctx`` after the router's own: it starts once the dispatcher exists and
    stops the runs before the dispatcher's connections close."""
    runs = app[BATCH_RUNS] = BatchRuns(app[STATE])
    if removed := await asyncio.to_thread(app[STATE].files.remove_stale_uploads):
        log.warning("removed %d upload(s) a stopped router left half-way", removed)
    watcher = asyncio.create_task(runs.watch())
    yield
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await runs.stop()
