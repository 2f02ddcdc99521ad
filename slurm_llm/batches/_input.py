"""A batch's input file, read a line at a time: ``{"custom_id", "method", "url", "body"}``.

The file is checked whole before any line is sent, as OpenAI's API does at ``validating``: a
line that is not JSON, lacks a ``custom_id`` or repeats one, asks for another method or
endpoint than the batch's, or whose body does not fit, fails the batch with its line number,
before any GPU time is spent. Reading is streamed, so a file of a million lines costs the
memory of its ``custom_id`` set, not of its requests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from slurm_llm.batches._batch_store import BatchError

MAX_REPORTED_ERRORS = 100  # a file broken on every line is told in a page, not a million lines
MAX_LINE_BYTES = 4 * 2**20  # as the router's default body limit: no line is read whole past it
# (url, body) -> what is wrong with the body, or None: the router's own request checks
BodyCheck = Callable[[str, dict[str, Any]], str | None]


@dataclass(frozen=True)
class InputLine:
    number: int  # from 1, as editors count
    custom_id: str
    body: dict[str, Any]


def input_lines(path: Path) -> Iterator[InputLine]:
    """The lines of a checked file, blank lines skipped."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            line = json.loads(raw)
            yield InputLine(number, line["custom_id"], line["body"])


def validate(
    path: Path, endpoint: str, check_body: BodyCheck
) -> tuple[int, list[BatchError], set[str]]:
    """The number of requests in the file, what is wrong with it (empty when nothing), and
    the models its lines ask for."""
    errors: list[BatchError] = []
    seen: set[str] = set()
    models: set[str] = set()
    total = 0
    with path.open("rb") as file:
        for number, raw in enumerate(bounded_lines(file), start=1):
            if raw is not None and not raw.strip():
                continue
            total += 1
            if problem := line_problem(raw, endpoint, seen, models, check_body):
                code, message, param = problem
                errors.append(BatchError(code=code, message=message, param=param, line=number))
    if total == 0:
        errors.append(BatchError(code="empty_file", message="the input file holds no request"))
    if len(errors) > MAX_REPORTED_ERRORS:
        more = len(errors) - MAX_REPORTED_ERRORS
        last = BatchError(code="too_many_errors", message=f"and {more} more lines like these")
        errors = [*errors[:MAX_REPORTED_ERRORS], last]
    return total, errors, models


def bounded_lines(file: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """The file's lines, each read no further than ``limit`` bytes: a longer one is None
    (and skipped to its end), so one line without a newline cannot take the router's memory."""
    while raw := file.readline(limit + 1):
        if len(raw) <= limit or raw.endswith(b"\n"):
            yield raw
            continue
        while (rest := file.readline(limit)) and not rest.endswith(b"\n"):
            pass
        yield None


def refuse_constant(name: str) -> None:
    """``NaN`` and ``Infinity``, which Python's parser takes and JSON does not: an engine
    would refuse the line, and the router, which writes the body again, would not keep them."""
    raise ValueError(f"it holds {name}, which JSON does not allow")


def line_problem(
    raw: bytes | None, endpoint: str, seen: set[str], models: set[str], check_body: BodyCheck
) -> tuple[str, str, str | None] | None:
    """(code, message, field) of what is wrong with one line (None: longer than the limit),
    or None; a good line's ``custom_id`` joins ``seen`` and its model ``models``."""
    if raw is None:
        return "line_too_long", f"the line is longer than {MAX_LINE_BYTES} bytes", None
    try:
        line = json.loads(raw, parse_constant=refuse_constant)
    except (ValueError, RecursionError) as exc:  # an integer over 4,300 digits is a ValueError
        return "invalid_json_line", f"the line is not JSON: {exc}", None
    if not isinstance(line, dict):
        return "invalid_json_line", "the line must be a JSON object", None
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return (
            "missing_custom_id",
            "each line needs a 'custom_id' (a non-empty string)",
            "custom_id",
        )
    if custom_id in seen:
        return "duplicate_custom_id", f"custom_id {custom_id!r} is used twice", "custom_id"
    seen.add(custom_id)
    if line.get("method", "POST") != "POST":
        return "invalid_method", "the method must be POST", "method"
    if line.get("url") != endpoint:
        return "mismatched_endpoint", (
            f"the line's url {line.get('url')!r} is not the batch's endpoint {endpoint!r}"
        ), "url"  # fmt: skip
    body = line.get("body")
    if not isinstance(body, dict):
        return "invalid_body", "the line needs a 'body' (a JSON object)", "body"
    if body.get("stream"):
        return "invalid_body", "batch requests cannot be streamed; drop 'stream'", "body.stream"
    if problem := check_body(endpoint, body):
        return "invalid_body", problem, "body"
    models.add(body["model"])
    return None
