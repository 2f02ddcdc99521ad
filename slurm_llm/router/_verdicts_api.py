"""``/v1/verdicts``: the tribunal's verdict log, newest first, filtered by outcome, law book and
mode. The log holds every caller's prompts, so only operators read it (``require_operator``).
It is read in a thread: a long log must not hold up the requests the router is relaying."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from slurm_llm.router._auth import require_operator
from slurm_llm.router._errors import RouterError
from slurm_llm.router._metering import CALLER
from slurm_llm.router._state import STATE
from slurm_llm.tribunal import VerdictLog

MAX_RUNS = 500
FILTERS = ("outcome", "laws", "mode")


def chosen(
    runs: list[dict[str, Any]], wanted: dict[str, str], limit: int
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The newest ``limit`` runs that match every filter given, and each filter's values
    found in the whole log (for the console's choices)."""
    values = {name: sorted({str(run[name]) for run in runs if run.get(name)}) for name in FILTERS}
    matching = [run for run in runs if all(str(run.get(k)) == v for k, v in wanted.items())]
    return matching[::-1][:limit], values


async def verdicts(request: web.Request) -> web.Response:
    state = request.app[STATE]
    require_operator(state.callers, request.get(CALLER), request.remote)
    text = request.query.get("limit", "50")
    if not text.isdigit() or not 1 <= int(text) <= MAX_RUNS:
        raise RouterError(400, f"limit must be a whole number from 1 to {MAX_RUNS}, not {text!r}",
                          param="limit")  # fmt: skip
    wanted = {name: request.query[name] for name in FILTERS if request.query.get(name)}
    read = await asyncio.to_thread(VerdictLog(state.verdict_log).read)
    runs, values = chosen(read.runs, wanted, int(text))
    return web.json_response(
        {"runs": runs, "total": len(read.runs), "damaged_lines": read.damaged_lines,
         "filters": values}
    )  # fmt: skip


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/verdicts", verdicts)
