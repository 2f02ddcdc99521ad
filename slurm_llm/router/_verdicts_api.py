"""``/v1/verdicts``: the tribunal's verdict log, newest first, filtered by outcome, law book and
mode. The log holds every caller's prompts, so only operators read it (``require_sight``).
It is parsed in a thread, and again only when the file has changed: a console polls it every
2 s, and a long log must not hold up the requests the router is relaying."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from slurm_llm.router._auth import require_sight
from slurm_llm.router._errors import RouterError
from slurm_llm.router._metering import CALLER
from slurm_llm.router._routes import Routes
from slurm_llm.router._state import STATE
from slurm_llm.tribunal import VerdictLog
from slurm_llm.tribunal._log import LogRead

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


class ParsedLog:
    """The verdict log as last parsed, kept while the file's size and time stay the same."""

    def __init__(self, path: Path) -> None:
        self.log = VerdictLog(path)
        self.stamp: tuple[int, int] | None = None
        self.parsed = LogRead([], 0)

    def read(self) -> LogRead:
        try:
            stat = self.log.path.stat()
        except FileNotFoundError:
            return LogRead([], 0)
        if (stat.st_mtime_ns, stat.st_size) != self.stamp:
            self.parsed = self.log.read()
            self.stamp = (stat.st_mtime_ns, stat.st_size)
        return self.parsed


LOG: web.AppKey[ParsedLog] = web.AppKey("verdict_log", ParsedLog)


async def verdicts(request: web.Request) -> web.Response:
    state = request.app[STATE]
    require_sight(state.callers, request.get(CALLER), "the verdict log")
    text = request.query.get("limit", "50")
    if not text.isdecimal() or not 1 <= int(text) <= MAX_RUNS:
        raise RouterError(400, f"limit must be a whole number from 1 to {MAX_RUNS}, not {text!r}",
                          param="limit")  # fmt: skip
    wanted = {name: request.query[name] for name in FILTERS if request.query.get(name)}
    read = await asyncio.to_thread(request.app[LOG].read)
    runs, values = chosen(read.runs, wanted, int(text))
    return web.json_response(
        {"runs": runs, "total": len(read.runs), "damaged_lines": read.damaged_lines,
         "filters": values}
    )  # fmt: skip


def add_routes(routes: Routes) -> None:
    app = routes.app
    app[LOG] = ParsedLog(app[STATE].verdict_log)
    routes.get("/v1/verdicts", verdicts)
